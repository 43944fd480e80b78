#!/usr/bin/env bash
# The ledger writer against the tree before issue 22 (3c817dd), alternating, one process per figure:
#
#   [AB_BOTH="--collect-first"] bash bench/ledger_write_ab.sh sqlite|postgresql PAIRS [extra args for this tree]
#
# (AB_BOTH: ledger_scale.py arguments for both trees; the others only for this tree's run) prints rows/s of `bench/ledger_scale.py --write-only 5000 --rounds 1` for each, and the load average.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
db=$1
pairs=$2
shift 2
before=/tmp/ledger-before
if [[ ! -d $before/gateway ]]; then
    mkdir -p "$before" && git archive 3c817dd | tar -x -C "$before"
fi
rate() { grep -o '= [0-9,]* rows' | tr -d '=, rows'; }
for i in $(seq "$pairs"); do
    b=$(PYTHONPATH=$before nice -n 10 .venv/bin/python bench/ledger_scale.py --db "$db" --write-only 5000 --rounds 1 ${AB_BOTH:-} | rate)
    a=$(nice -n 10 .venv/bin/python bench/ledger_scale.py --db "$db" --write-only 5000 --rounds 1 ${AB_BOTH:-} "$@" | rate)
    echo "$db pair $i: before $b  after $a  load $(cut -d' ' -f1 /proc/loadavg)"
done
