#!/usr/bin/env bash
# The throughput of several gateway source trees at 32 connections, measured in alternation: `bench/seq_tail_ab.sh`
# with PHASE=conc (the harness's concurrent phase, `wrk -t1 -c32` for DURATION=12 s after a WARMUP_S=5 s warm-up).
#
#   bash bench/throughput_ab.sh REPS NAME=TREE [NAME=TREE ...]
#   e.g.  git archive b1ce5a1 | tar -x -C /tmp/before
#         bash bench/throughput_ab.sh 3 before=/tmp/before after=.
PHASE=conc WARMUP_S="${WARMUP_S:-5}" exec bash "$(dirname "${BASH_SOURCE[0]}")/seq_tail_ab.sh" "$@"
