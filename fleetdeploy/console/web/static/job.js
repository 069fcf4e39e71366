// The live job view: one EventSource; the server sends the grid's changes, this only paints them.
"use strict";
(() => {
  const root = document.getElementById("job");
  const jobId = root.dataset.jobId;
  const grid = document.getElementById("grid");
  const logEl = document.getElementById("log");
  const follow = document.getElementById("follow");
  const statusEl = document.getElementById("job-status");
  const state = { columns: [], hosts: [], cells: new Map(), results: {} };
  // The statuses a job ends in, the one it waits for an approval in, and each status's badge, as the
  // server names them (status.py, web/pages.py).
  const FINAL = root.dataset.final.split(" ");
  const WAITING = root.dataset.waiting;
  const BADGE = JSON.parse(root.dataset.badges);
  // A job still running when the page loaded offers no Relaunch yet: when its stream ends, the server's
  // own rendering of the actions (who may relaunch, which hosts failed) replaces the empty one.
  const watchedLive = !FINAL.includes(statusEl.textContent.trim());
  let pendingPaint = false;
  let logBuf = [];

  const esc = (s) => s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

  // ANSI SGR colour codes to spans; anything else is dropped.
  function ansi(text) {
    let out = "", open = 0;
    for (const part of text.split(/(\x1b\[[0-9;]*m)/)) {
      const m = /^\x1b\[([0-9;]*)m$/.exec(part);
      if (!m) { out += esc(part.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "")); continue; }
      const codes = m[1].split(";").filter(Boolean).map(Number);
      if (codes.length === 0 || codes.includes(0)) { out += "</span>".repeat(open); open = 0; }
      const cls = codes.filter((c) => c === 1 || (c >= 30 && c <= 37) || (c >= 90 && c <= 97)).map((c) => "a-" + c);
      if (cls.length) { out += `<span class="${cls.join(" ")}">`; open++; }
    }
    return out + "</span>".repeat(open);
  }

  function setStatus(status, explanation) {
    statusEl.textContent = status;
    statusEl.className = "badge " + (BADGE[status] || "pending");
    if (explanation !== undefined && explanation !== null) document.getElementById("job-explanation").textContent = explanation;
    if (FINAL.includes(status)) {
      const cancel = document.getElementById("cancel-form");
      if (cancel) cancel.remove();
    }
  }

  // The actions and the times (finish, elapsed, rc) as the server renders them for the ended job.
  async function refreshActions() {
    const page = await fetch(window.location.pathname, { credentials: "same-origin" });
    if (!page.ok) return;
    const doc = new DOMParser().parseFromString(await page.text(), "text/html");
    for (const id of ["job-actions", "job-times"]) {
      const fresh = doc.getElementById(id);
      const here = document.getElementById(id);
      if (fresh && here) here.replaceWith(document.importNode(fresh, true));
    }
  }

  // One host's output, task by task, from /api/jobs/N/hosts/H/log: opened by a click on its row in the grid.
  const hostCard = document.getElementById("host-log-card");
  const elapsedText = (s) => (s === null || s === undefined ? "" : s < 60 ? s.toFixed(2) + "s" : `${Math.floor(s / 60)}m ${Math.round(s % 60)}s`);
  async function showHost(host) {
    const r = await fetch(`/api/jobs/${jobId}/hosts/${encodeURIComponent(host)}/log`, { credentials: "same-origin" });
    const body = hostCard.querySelector("tbody");
    document.getElementById("host-log-name").textContent = host;
    const badge = document.getElementById("host-log-result");
    hostCard.hidden = false;
    hostCard.dataset.host = host;
    if (!r.ok) {
      badge.textContent = ""; badge.className = "badge";
      body.innerHTML = `<tr><td colspan="5" class="error">${esc((await r.json()).detail || r.statusText)}</td></tr>`;
      return;
    }
    const log = await r.json();
    badge.textContent = log.result || "";
    badge.className = "badge " + (BADGE[log.result] || (log.result === "changed" ? "ok" : "pending"));
    body.innerHTML = log.tasks.length ? log.tasks.map((t) =>
      `<tr class="hosttask" data-state="${esc(t.state)}"><td class="muted">${t.counter ?? ""}</td><td>${esc(t.task)}</td>` +
      `<td><span class="cell ${esc(t.state)}">${esc(t.state)}</span></td><td class="elapsed">${elapsedText(t.elapsed)}</td>` +
      `<td><pre class="hostout">${ansi(t.stdout)}</pre></td></tr>`).join("")
      : `<tr><td colspan="5" class="muted">${log.events_pruned ? "The job's events were pruned." : "No task has ended on this host yet."}</td></tr>`;
    hostCard.scrollIntoView({ block: "nearest" });
  }
  grid.addEventListener("click", (e) => {
    const row = e.target.closest("tbody tr[data-host]");
    if (row) showHost(row.dataset.host);
  });
  document.getElementById("host-log-close").addEventListener("click", () => { hostCard.hidden = true; delete hostCard.dataset.host; });

  // Search the job's output on the server (every line stored, not only what this page has painted).
  document.getElementById("log-search").addEventListener("submit", async (e) => {
    e.preventDefault();
    const q = document.getElementById("log-search-q").value;
    const r = await fetch(`/api/jobs/${jobId}/log/search?q=${encodeURIComponent(q)}`, { credentials: "same-origin" });
    const table = document.getElementById("log-matches");
    const count = document.getElementById("log-search-count");
    if (!r.ok) { count.textContent = "search failed: " + r.statusText; table.hidden = true; return; }
    const found = await r.json();
    count.textContent = `${found.matches.length}${found.truncated ? "+" : ""} line(s)`;
    table.tBodies[0].innerHTML = found.matches.map((m) =>
      `<tr><td>${esc(m.host || "")}</td><td>${esc(m.task)}</td><td><code>${esc(m.line)}</code></td></tr>`).join("");
    table.hidden = found.matches.length === 0;
  });

  function addHost(h) { if (!state.hosts.includes(h)) state.hosts.push(h); }

  function paint() {
    pendingPaint = false;
    const head = grid.tHead.rows[0];
    const cols = state.columns.filter(Boolean);
    head.innerHTML = "<th>host</th>" + cols.map((c) => `<th title="${esc(c.play)}"><b>batch ${c.batch}</b><br><small>${esc(c.play)}</small></th>`).join("") + "<th>result</th>";
    const body = grid.tBodies[0];
    const hosts = [...state.hosts].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
    body.innerHTML = hosts.map((h) => {
      const tds = cols.map((c) => {
        const cell = state.cells.get(h + "\u0000" + c.index);
        if (!cell) {
          const seenLater = cols.some((d) => d.index > c.index && state.cells.has(h + "\u0000" + d.index));
          const seenBefore = cols.some((d) => d.index < c.index && state.cells.has(h + "\u0000" + d.index));
          return `<td class="cell ${seenLater || seenBefore ? "none" : "pending"}" data-host="${esc(h)}" data-col="${c.index}"></td>`;
        }
        const cls = cell.running ? "running" : cell.state;
        const label = cell.running ? cell.task : (cell.state + (cell.task ? " · " + cell.task : ""));
        return `<td class="cell ${cls}" data-host="${esc(h)}" data-col="${c.index}" data-state="${cls}" title="${esc(label)}">${esc(label)}</td>`;
      }).join("");
      const result = state.results[h];
      const resultTd = result ? `<td class="cell result ${result}" data-result="${result}">${result}</td>` : `<td class="cell pending result">pending</td>`;
      return `<tr data-host="${esc(h)}"><th class="host">${esc(h)}</th>${tds}${resultTd}</tr>`;
    }).join("");
  }
  const schedulePaint = () => { if (!pendingPaint) { pendingPaint = true; requestAnimationFrame(paint); } };

  function flushLog() {
    if (!logBuf.length) return;
    logEl.insertAdjacentHTML("beforeend", logBuf.join(""));
    logBuf = [];
    if (follow.checked) logEl.scrollTop = logEl.scrollHeight;
  }
  setInterval(flushLog, 100);

  function recap(r) {
    const rows = Object.entries(r || {});
    if (!rows.length) return;
    document.getElementById("recap-card").hidden = false;
    document.querySelector("#recap tbody").innerHTML = rows.map(([h, c]) =>
      `<tr data-host="${esc(h)}"><td>${esc(h)}</td><td>${c.ok}</td><td>${c.changed}</td><td>${c.dark}</td><td>${c.failures}</td><td>${c.skipped}</td><td>${c.rescued}</td><td>${c.ignored}</td></tr>`).join("");
  }

  function handle(msg) {
    switch (msg.type) {
      case "snapshot": {
        const g = msg.grid;
        g.columns.forEach((c) => { state.columns[c.index] = c; });
        g.hosts.forEach(addHost);
        g.cells.forEach((c) => state.cells.set(c.host + "\u0000" + c.col, c));
        state.results = Object.assign({}, FINAL.includes(msg.job.status) ? g.results : {});
        setStatus(msg.job.status, msg.job.explanation);
        recap(g.recap);
        break;
      }
      case "hosts": msg.hosts.forEach(addHost); break;
      case "status":
        setStatus(msg.status, msg.explanation);
        if (msg.results) state.results = msg.results;
        if (msg.recap) recap(msg.recap);
        if (msg.cells) msg.cells.forEach((c) => state.cells.set(c.host + "\u0000" + c.col, c));
        break;
      case "event":
        if (msg.column) state.columns[msg.column.index] = msg.column;
        if (msg.cell) { addHost(msg.cell.host); state.cells.set(msg.cell.host + "\u0000" + msg.cell.col, msg.cell); }
        if (msg.recap) { recap(msg.recap); Object.keys(msg.recap).forEach(addHost); }
        if (msg.event.stdout) logBuf.push(ansi(msg.event.stdout) + "\n");
        break;
      case "end":
        flushLog(); source.close(); document.body.dataset.streamEnded = "1";
        if (watchedLive) refreshActions();
        if (hostCard.dataset.host) showHost(hostCard.dataset.host);
        break;
      case "error": setStatus(statusEl.textContent, msg.detail); source.close(); break;
    }
    schedulePaint();
  }

  // A pending job has nothing to stream until someone approves (or rejects) it, or it expires: ask for its
  // status now and then, and load the page afresh when it changes.
  if (statusEl.textContent.trim() === WAITING) {
    const poll = setInterval(async () => {
      try {
        const r = await fetch(`/api/jobs/${jobId}`, { credentials: "same-origin" });
        if (r.status >= 400 && r.status < 500) { clearInterval(poll); return; }  // signed out, or no longer allowed
        if (r.ok && (await r.json()).status !== WAITING) { clearInterval(poll); window.location.reload(); }
      } catch (e) { /* the console is restarting: ask again at the next tick */ }
    }, 2000);
    return;
  }
  const source = new EventSource(`/api/jobs/${jobId}/events`);
  source.onmessage = (e) => handle(JSON.parse(e.data));
  document.body.dataset.streamStarted = "1";
})();
