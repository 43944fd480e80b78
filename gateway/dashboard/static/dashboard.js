/* The gateway's cost dashboard: reads /admin/dashboard/data with the master key (kept in sessionStorage)
 * and draws it with Chart.js. Money arrives as exact decimal strings; the KPI elements keep that exact
 * string in data-value and show it rounded. The quality panel (/admin/quality, a heavier query) refreshes
 * less often (?quality_refresh=, seconds, default 60; both at least 1), and never while its previous request is pending. */
(function () {
  "use strict";

  var STORAGE_KEY = "gateway-master-key";
  var SEARCH = new URLSearchParams(location.search);
  // seconds from the address, at least `least` (each load flushes the ledger and runs several queries: a link
  // with ?refresh=0 must not turn an open tab into a load generator); not a number: the default
  function seconds(name, fallback, least) {
    var value = Number(SEARCH.get(name));
    return 1000 * (SEARCH.get(name) && isFinite(value) ? Math.max(least, value) : fallback);
  }
  var REFRESH_MS = seconds("refresh", 5, 1);
  var QUALITY_REFRESH_MS = seconds("quality_refresh", 60, 1);
  var PALETTE = ["#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
                 "#ea580c", "#475569"];
  var charts = {};
  var timer = null;
  var loads = 0;  // the newest load's number: an older response arriving late is dropped
  // the quality panel's request: one at a time, for the range shown (query), at most every QUALITY_REFRESH_MS
  var quality = {pending: false, query: null, at: 0, wanted: {query: null, headers: {}}};

  function $(id) { return document.getElementById(id); }

  function storedKey() { return sessionStorage.getItem(STORAGE_KEY); }

  function usd(value, digits) {
    var n = Number(value || 0);
    var d = digits === undefined ? (Math.abs(n) >= 100 ? 2 : 6) : digits;
    return (n < 0 ? "-$" : "$") + Math.abs(n).toLocaleString("en-US", {minimumFractionDigits: d, maximumFractionDigits: d});
  }

  function int(n) { return Number(n || 0).toLocaleString("en-US"); }

  function setMoney(id, value) {
    var el = $(id);
    el.dataset.value = value;
    el.textContent = usd(value);
  }

  function setText(id, text, value) {
    var el = $(id);
    el.textContent = text;
    if (value !== undefined) { el.dataset.value = String(value); }
  }

  function bucketLabel(ms, widthS) {
    var iso = new Date(ms).toISOString();
    return widthS >= 86400 ? iso.slice(0, 10) : iso.slice(5, 10) + " " + iso.slice(11, 16);
  }

  function modelName(m) { return m === null || m === undefined ? "(none)" : m; }

  function draw(id, config) {
    if (charts[id]) { charts[id].destroy(); }
    config.options = Object.assign({responsive: true, maintainAspectRatio: false, animation: false}, config.options || {});
    charts[id] = new Chart($(id), config);
    return charts[id];
  }

  function sumDatasets(chart, index) {
    var total = 0;
    chart.data.datasets.forEach(function (ds, i) {
      if (index !== undefined && i !== index) { return; }
      ds.data.forEach(function (v) { total += Number(v || 0); });
    });
    return total;
  }

  function renderTotals(data) {
    var t = data.totals;
    setText("total-requests", int(t.requests), t.requests);
    setText("error-count", int(t.errors), t.errors);
    setMoney("total-cost", t.cost_usd);
    setText("total-tokens", int(t.total_tokens), t.total_tokens);
    setMoney("total-baseline", t.baseline_cost_usd);
    setMoney("total-saved", t.saved_vs_baseline_usd);
    var saved = Number(t.saved_vs_baseline_usd);
    var pct = Number(t.baseline_cost_usd) > 0 ? 100 * saved / Number(t.baseline_cost_usd) : 0;
    setText("saved-pct", pct.toFixed(1) + "%", pct.toFixed(4));
    setText("cache-hit-rate", (100 * t.cache_hit_rate).toFixed(1) + "%", t.cache_hit_rate);
    setText("cache-hits", int(t.cache_hits), t.cache_hits);
    setText("baseline-name", data.baseline_model || "GPT-4");
  }

  function renderSpend(data) {
    var width = data.range.bucket_s;
    var buckets = [];
    var models = [];
    data.timeseries.forEach(function (p) {
      if (buckets.indexOf(p.bucket) < 0) { buckets.push(p.bucket); }
      var m = modelName(p.model);
      if (models.indexOf(m) < 0) { models.push(m); }
    });
    buckets.sort(function (a, b) { return a - b; });
    var datasets = models.map(function (m, i) {
      var values = buckets.map(function () { return 0; });
      data.timeseries.forEach(function (p) {
        if (modelName(p.model) === m) { values[buckets.indexOf(p.bucket)] += Number(p.cost_usd); }
      });
      return {label: m, data: values, backgroundColor: PALETTE[i % PALETTE.length], stack: "cost"};
    });
    var chart = draw("chart-spend", {
      type: "bar",
      data: {labels: buckets.map(function (b) { return bucketLabel(b, width); }), datasets: datasets},
      options: {scales: {x: {stacked: true}, y: {stacked: true, title: {display: true, text: "USD"}}}}
    });
    var shown = sumDatasets(chart);
    setText("chart-spend-total", usd(shown), shown.toFixed(12));

    var cumCost = [], cumBase = [], c = 0, b = 0;
    buckets.forEach(function (bucket) {
      data.timeseries.forEach(function (p) {
        if (p.bucket === bucket) { c += Number(p.cost_usd); b += Number(p.baseline_cost_usd); }
      });
      cumCost.push(c);
      cumBase.push(b);
    });
    draw("chart-savings", {
      type: "line",
      data: {
        labels: buckets.map(function (x) { return bucketLabel(x, width); }),
        datasets: [
          {label: "spend", data: cumCost, borderColor: PALETTE[0], backgroundColor: PALETTE[0], fill: false},
          {label: "all on " + (data.baseline_model || "GPT-4"), data: cumBase, borderColor: PALETTE[3],
           backgroundColor: PALETTE[3], borderDash: [6, 4], fill: false}
        ]
      },
      options: {scales: {y: {beginAtZero: true, title: {display: true, text: "USD, cumulative"}}}}
    });
    setText("chart-savings-cost", usd(c), c.toFixed(12));
    setText("chart-savings-baseline", usd(b), b.toFixed(12));
  }

  function renderBackends(data) {
    var rows = data.by_model.filter(function (r) { return r.group !== null; });
    var chart = draw("chart-backend", {
      type: "bar",
      data: {
        labels: rows.map(function (r) { return r.group; }),
        datasets: [
          {label: "requests", data: rows.map(function (r) { return r.requests; }), backgroundColor: PALETTE[0], yAxisID: "y"},
          {label: "tokens", data: rows.map(function (r) { return r.total_tokens; }), backgroundColor: PALETTE[1], yAxisID: "y1"}
        ]
      },
      options: {scales: {y: {beginAtZero: true, position: "left", title: {display: true, text: "requests"}},
                         y1: {beginAtZero: true, position: "right", grid: {drawOnChartArea: false},
                              title: {display: true, text: "tokens"}}}}
    });
    setText("chart-backend-requests", int(sumDatasets(chart, 0)), sumDatasets(chart, 0));
    setText("chart-backend-tokens", int(sumDatasets(chart, 1)), sumDatasets(chart, 1));

    var t = data.totals;
    var cache = draw("chart-cache", {
      type: "doughnut",
      data: {labels: ["hits", "other requests"],
             datasets: [{data: [t.cache_hits, t.requests - t.cache_hits], backgroundColor: [PALETTE[1], "#cbd5e1"]}]}
    });
    setText("chart-cache-hits", int(cache.data.datasets[0].data[0]), cache.data.datasets[0].data[0]);
    setText("chart-cache-total", int(sumDatasets(cache)), sumDatasets(cache));

    var names = Object.keys(data.latency);
    draw("chart-latency", {
      type: "bar",
      data: {
        labels: names,
        datasets: [
          {label: "p50", data: names.map(function (n) { return data.latency[n].p50_ms; }), backgroundColor: PALETTE[0]},
          {label: "p95", data: names.map(function (n) { return data.latency[n].p95_ms; }), backgroundColor: PALETTE[2]}
        ]
      },
      options: {scales: {y: {beginAtZero: true, title: {display: true, text: "ms"}}}}
    });

    var body = $("table-models").querySelector("tbody");
    body.textContent = "";
    data.by_model.forEach(function (r) {
      var lat = data.latency[r.group] || {};
      addRow(body, [modelName(r.group), int(r.requests), int(r.prompt_tokens), int(r.completion_tokens),
                    usd(r.cost_usd), usd(r.baseline_cost_usd), usd(r.saved_usd), ms(lat.p50_ms), ms(lat.p95_ms),
                    ms(lat.ttft_p50_ms)], r.group);
    });
  }

  function ms(v) { return v === null || v === undefined ? "–" : Number(v).toFixed(1); }

  function addRow(tbody, cells, key) {
    var tr = document.createElement("tr");
    if (key !== undefined && key !== null) { tr.dataset.key = key; }
    cells.forEach(function (c) {
      var td = document.createElement("td");
      td.textContent = c;
      tr.appendChild(td);
    });
    tbody.appendChild(tr);
  }

  function renderTop(id, rows, label) {
    var body = $(id).querySelector("tbody");
    body.textContent = "";
    rows.forEach(function (r) {
      addRow(body, [label(r), int(r.requests), int(r.total_tokens), usd(r.cost_usd)], r.group);
    });
  }

  function rate(v) { return (Number(v || 0) * 100).toFixed(1) + " %"; }

  function renderCascade(rows) {
    var body = $("table-cascade").querySelector("tbody");
    body.textContent = "";
    (rows || []).forEach(function (r) {
      var routed = r.routed_cost_usd === null ? "–" : usd(r.routed_cost_usd);
      var savedRouting = r.saved_vs_routing_usd === null ? "–" : usd(r.saved_vs_routing_usd);
      var savedBase = Number(r.baseline_cost_usd) - Number(r.cost_usd);
      addRow(body, [r.route === null ? "(none)" : r.route, int(r.requests), int(r.escalated),
                    rate(r.escalation_rate), usd(r.cost_usd), routed, savedRouting, usd(savedBase)], r.route);
    });
    $("card-cascade").hidden = !(rows && rows.length);
  }

  function render(data) {
    renderTotals(data);
    renderSpend(data);
    renderBackends(data);
    renderTop("table-keys", data.top_keys, function (r) {
      return r.group === null ? "(no key)" : (r.name ? r.name + " (" + r.group + ")" : r.group);
    });
    renderTop("table-users", data.top_users, function (r) { return r.group === null ? "(no user)" : r.group; });
    renderCascade(data.cascade);
    $("ledger-status").textContent = data.ledger.pending_rows + " ledger rows pending, " +
      data.ledger.dropped_rows + " dropped; " + data.range.bucket_s + " s buckets";
    $("last-updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
  }

  function pct(x) { return (100 * x).toFixed(0) + "%"; }

  function qualityLine(r, baseline) {
    var e = r.estimate;
    var line = "route " + r.route + ": ";
    if (r.samples > 0 && e.rate !== null) {
      var half = Math.max(e.rate - e.ci95_low, e.ci95_high - e.rate);
      line += pct(e.rate) + " ± " + pct(half) + " of " + (r.reference_model || "the reference") + "'s quality";
    } else {
      line += "no answer judged yet";
    }
    if (r.cost_share !== null) { line += " at " + pct(r.cost_share) + " of " + baseline + "'s cost"; }
    line += ", n = " + int(r.samples);
    var fh = r.semantic_false_hits;
    if (fh && fh.checked > 0) {
      var fhHalf = Math.max(fh.rate - fh.ci95_low, fh.ci95_high - fh.rate);
      line += "; semantic false hits " + (100 * fh.rate).toFixed(1) + "% ± " + (100 * fhHalf).toFixed(1) +
        "% (n = " + int(fh.checked) + ")";
    }
    return line;
  }

  function renderQuality(body) {
    var list = $("quality-lines");
    list.textContent = "";
    body.data.filter(function (r) { return r.requests > 0 || r.samples > 0; }).forEach(function (r) {
      var li = document.createElement("li");
      li.dataset.route = r.route;
      li.dataset.samples = String(r.samples);
      if (r.estimate.rate !== null) { li.dataset.estimate = String(r.estimate.rate); }
      li.textContent = qualityLine(r, body.baseline_model);
      list.appendChild(li);
    });
    var m = body.monitor;
    $("quality-note").textContent = m.enabled
      ? "(wins + ties) / judged samples, 95% Wilson interval; monitoring spent " + usd(m.spent_today_usd) +
        " of " + usd(m.daily_budget_usd) + " today"
      : "quality monitor off (quality.enabled); feedback only";
    if (body.router && body.router.kind) { $("quality-note").textContent += ". Router: " + body.router.note; }
  }

  function qualityDue(query) {
    return query !== quality.query || Date.now() - quality.at >= QUALITY_REFRESH_MS;
  }

  function loadQuality(params, headers) {
    quality.wanted = {query: params.toString(), headers: headers};
    fetchQuality();
  }

  function fetchQuality() {
    var want = quality.wanted;
    if (quality.pending || !qualityDue(want.query)) { return; }
    quality.pending = true;
    quality.query = want.query;
    quality.at = Date.now();
    fetch("/admin/quality?group_by=route&" + want.query, {headers: want.headers, cache: "no-store"})
      .then(function (r) { return r.json().then(function (body) { return {status: r.status, body: body}; }); })
      .then(function (res) {
        if (want.query !== quality.wanted.query) { return; }  // the range changed meanwhile: asked again below
        if (res.status === 200) { renderQuality(res.body); } else { $("quality-note").textContent = "quality: unavailable"; }
      })
      .catch(function () { $("quality-note").textContent = "quality: unavailable"; })
      .then(function () {
        quality.pending = false;
        if (quality.wanted.query !== want.query) { fetchQuality(); }
      });
  }

  function showLogin(message) {
    $("dashboard").hidden = true;
    $("controls").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    stopTimer();
  }

  function load() {
    var mine = ++loads;
    var key = storedKey();
    if (key === null) { showLogin(""); return; }
    var params = new URLSearchParams();
    var range = $("range").value;
    if (range) { params.set("start", range); }
    var headers = key ? {"Authorization": "Bearer " + key} : {};
    fetch("/admin/dashboard/data?" + params.toString(), {headers: headers, cache: "no-store"})
      .then(function (r) {
        return r.json().then(function (body) { return {status: r.status, body: body}; });
      })
      .then(function (res) {
        if (mine !== loads) { return; }
        if (res.status === 401 || res.status === 403) {
          sessionStorage.removeItem(STORAGE_KEY);
          showLogin(res.body.error ? res.body.error.message : "Not authorized.");
          return;
        }
        if (res.status !== 200) {
          $("last-updated").textContent = "error: " + (res.body.error ? res.body.error.message : res.status);
          scheduleRefresh();
          return;
        }
        $("login").hidden = true;
        $("dashboard").hidden = false;
        $("controls").hidden = false;
        render(res.body);
        loadQuality(params, headers);
        scheduleRefresh();
      })
      .catch(function (err) { $("last-updated").textContent = "error: " + err; });
  }

  function reload() {  // asked for (sign-in, Refresh): the quality panel too, not only when due
    quality.at = 0;
    load();
  }

  function stopTimer() { if (timer !== null) { clearTimeout(timer); timer = null; } }

  function scheduleRefresh() {
    stopTimer();
    if ($("live").checked) { timer = setTimeout(load, REFRESH_MS); }
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("login-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      sessionStorage.setItem(STORAGE_KEY, $("master-key").value);
      $("master-key").value = "";
      reload();
    });
    $("logout").addEventListener("click", function () {
      sessionStorage.removeItem(STORAGE_KEY);
      showLogin("");
    });
    $("refresh").addEventListener("click", reload);
    $("range").addEventListener("change", load);
    $("live").addEventListener("change", scheduleRefresh);
    if (storedKey() !== null) { load(); } else { showLogin(""); }
  });
})();
