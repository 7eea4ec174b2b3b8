// busbell driver display: renders display model v1 pushed by Server-Sent Events.
// No framework, no CDN: the page must work on a bus with no mobile network.
"use strict";
(() => {
  const I18N = {
    ko: {
      title: "busbell 운전석 표시",
      route: "노선",
      on_board: "탑승",
      persons: "명",
      conn_page: "화면",
      conn_broker: "중계",
      conn_edge: "단말",
      conn_net: "통신",
      next_stop: "다음 정류장",
      upcoming: "이후 정류장",
      waiting: "승차 대기",
      no_waits: "대기 없음",
      assist: "휠체어·도움",
      stop_requested: "하차 요청",
      alight: "하차",
      no_trip: "운행 정보 없음",
      no_stops: "없음",
      more: "외 {n}곳",
      ack: "확인 ({n})",
      ack_done: "확인됨 ✓",
      ack_none: "요청 없음",
      ack_sending: "전송 중…",
      ack_failed: "전송 실패 — 다시 누르세요",
      ack_offline: "연결 끊김 — 확인 불가",
      stale_page: "화면 연결 끊김 · 마지막 정보 {n}초 전",
      stale_broker: "중계 서버 연결 끊김 · 마지막 정보 {n}초 전",
      stale_edge: "단말 꺼짐 · 마지막 정보 {n}초 전",
      stale_age: "정보 지연 · 마지막 정보 {n}초 전",
      waiting_data: "연결 중…",
      lang_button: "EN",
    },
    en: {
      title: "busbell driver display",
      route: "Route",
      on_board: "On board",
      persons: "",
      conn_page: "Page",
      conn_broker: "Broker",
      conn_edge: "Edge",
      conn_net: "Network",
      next_stop: "Next stop",
      upcoming: "Following stops",
      waiting: "Waiting",
      no_waits: "Nobody waiting",
      assist: "Wheelchair / assist",
      stop_requested: "STOP REQUESTED",
      alight: "Stop",
      no_trip: "No trip",
      no_stops: "None",
      more: "+{n} more",
      ack: "ACKNOWLEDGE ({n})",
      ack_done: "Acknowledged ✓",
      ack_none: "No requests",
      ack_sending: "Sending…",
      ack_failed: "Failed — press again",
      ack_offline: "Disconnected — cannot acknowledge",
      stale_page: "Display disconnected · last data {n} s ago",
      stale_broker: "Broker disconnected · last data {n} s ago",
      stale_edge: "Edge unit offline · last data {n} s ago",
      stale_age: "Data delayed · last data {n} s ago",
      waiting_data: "Connecting…",
      lang_button: "한국어",
    },
  };
  const LANG_KEY = "busbell.driver.lang";
  const TOKEN_KEY = "busbell.driver.token";
  const $ = (id) => document.getElementById(id);

  let lang = localStorage.getItem(LANG_KEY) === "en" ? "en" : "ko";
  let hello = { stops_shown: 5, heartbeat_s: 5, stale_after_s: 45 };
  let model = null;
  let state = null;
  let stateAt = 0;
  let pageUp = false;
  let everConnected = false;
  let lastMsg = performance.now();
  let es = null;
  let shownIds = [];
  let ackNote = null;
  let ackNoteTimer = null;
  let sending = false;

  const token = (() => {
    const fromUrl = new URLSearchParams(location.search).get("token");
    if (fromUrl) {
      localStorage.setItem(TOKEN_KEY, fromUrl);
      history.replaceState(null, "", location.pathname);
    }
    return localStorage.getItem(TOKEN_KEY);
  })();

  function t(key, vars) {
    let s = I18N[lang][key] ?? key;
    for (const [k, v] of Object.entries(vars || {})) s = s.replace(`{${k}}`, String(v));
    return s;
  }

  function applyLang() {
    document.documentElement.lang = lang;
    document.title = t("title");
    for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
    $("lang").textContent = t("lang_button");
    $("lang").lang = lang === "ko" ? "en" : "ko";
    render();
  }

  function seen() {
    lastMsg = performance.now();
    pageUp = true;
    everConnected = true;
  }

  function connect() {
    if (es) es.close();
    es = new EventSource(token ? "events?token=" + encodeURIComponent(token) : "events");
    es.onopen = () => { seen(); render(); };
    es.onerror = () => { pageUp = false; render(); };
    es.addEventListener("hello", (e) => { hello = JSON.parse(e.data); seen(); });
    es.addEventListener("display", (e) => { model = JSON.parse(e.data); seen(); render(); });
    es.addEventListener("state", (e) => {
      state = JSON.parse(e.data);
      stateAt = performance.now();
      seen();
      render();
    });
  }

  // EventSource reconnects by itself after an error, but not after an HTTP error reply,
  // and never notices a connection that went silent: three missed heartbeats restart it.
  setInterval(() => {
    const silentMs = performance.now() - lastMsg;
    if (silentMs > 3 * hello.heartbeat_s * 1000) {
      pageUp = false;
      lastMsg = performance.now();
      connect();
    }
    render();
  }, 1000);

  function ageS() {
    if (!state || state.age_s === null || state.age_s === undefined) return null;
    return Math.round(state.age_s + (performance.now() - stateAt) / 1000);
  }

  function staleReason() {
    if (!pageUp) return "stale_page";
    if (!state) return null;
    if (!state.broker) return "stale_broker";
    if (state.edge === "offline") return "stale_edge";
    const age = ageS();
    if (age !== null && age > hello.stale_after_s) return "stale_age";
    return null;
  }

  function sameStop(a, b) {
    return a && b && a.stop_id === b.stop_id && a.seq === b.seq;
  }

  function icon(name, cls) {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "icon " + (cls || ""));
    const use = document.createElementNS("http://www.w3.org/2000/svg", "use");
    use.setAttribute("href", "#i-" + name);
    svg.appendChild(use);
    return svg;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // Shrink a text until it fits: at most `lines` lines (0: any), no sideways overflow, and its
  // section (`box`) not overflowing either.
  function fitText(node, maxPx, minPx, lines, box) {
    let size = maxPx;
    const over = () => (lines > 0 && node.scrollHeight > size * 1.2 * lines + 2) ||
      node.scrollWidth > node.clientWidth + 1 ||
      (box && box.scrollHeight > box.clientHeight + 1);
    node.style.fontSize = size + "px";
    while (size > minPx && over()) {
      size -= 2;
      node.style.fontSize = size + "px";
    }
  }

  function render() {
    const acked = new Set(state ? state.acked : []);
    const next = model ? model.next_stop : null;
    const all = model ? model.stops.filter((s) => !sameStop(s, next)) : [];
    const listed = all.slice(0, hello.stops_shown);
    const ids = [];
    for (const s of [next, ...listed]) if (s) for (const id of s.request_ids) if (!ids.includes(id)) ids.push(id);
    shownIds = ids;
    const unacked = ids.filter((id) => !acked.has(id));

    // header
    $("route").textContent = model && model.route_id ? model.route_id : "–";
    $("trip").textContent = model && model.trip_id ? model.trip_id : "";
    $("on-board").textContent = model ? String(model.on_board) : "–";
    setPill("conn-page", pageUp);
    setPill("conn-broker", pageUp && state ? state.broker : null);
    setPill("conn-edge", pageUp && state && state.edge !== "unknown" ? state.edge === "online" : null);
    setPill("conn-net", pageUp && model ? model.online : null);

    // stale banner
    const reason = staleReason();
    const stale = reason !== null || !everConnected;
    document.body.classList.toggle("stale", stale);
    document.body.classList.toggle("disconnected", !pageUp);
    $("stale").hidden = !stale;
    const age = ageS();
    $("stale-text").textContent = reason === null ? t("waiting_data") : t(reason, { n: age === null ? "–" : age });

    // next stop
    const name = $("next-name");
    name.textContent = next ? (next.name || next.stop_id) : (model ? t("no_trip") : "–");
    $("stop-requested").hidden = !(next && next.stop_requested);
    const waits = next ? next.waits : 0;
    $("next-waits").classList.toggle("none", waits === 0);
    $("next-waits").classList.toggle("new", next !== null && next.request_ids.some((id) => !acked.has(id)));
    $("wait-count").textContent = waits === 0 ? t("no_waits") : String(waits);
    $("wait-unit").hidden = waits === 0;
    $("next-waits").querySelector(".label").hidden = waits === 0;
    $("wait-assist").hidden = !(next && next.assist);
    const box = $("next");
    const vw = window.innerWidth / 100;
    fitText($("stop-requested"), Math.min(84, 6.6 * vw), 28, 0, null);
    fitText(name, Math.min(110, 10 * vw), 32, 3, box);

    // following stops
    const ol = $("stops");
    ol.replaceChildren();
    for (const s of listed) {
      const li = el("li", "stop");
      li.dataset.stopId = s.stop_id;
      if (s.request_ids.some((id) => !acked.has(id))) li.classList.add("new");
      li.appendChild(el("span", "name", s.name || s.stop_id));
      const tags = el("span", "tags");
      if (s.stop_requested) tags.appendChild(el("span", "tag alight", t("alight")));
      if (s.assist) tags.appendChild(icon("assist", "assist"));
      if (s.waits > 0) {
        const w = el("span", "tag waits");
        w.appendChild(icon("person"));
        w.appendChild(el("b", "", String(s.waits)));
        tags.appendChild(w);
      }
      li.appendChild(tags);
      ol.appendChild(li);
    }
    if (model && listed.length === 0) ol.appendChild(el("li", "stop empty", t("no_stops")));
    const more = all.length - listed.length;
    $("more").hidden = more <= 0;
    $("more").textContent = more > 0 ? t("more", { n: more }) : "";
    // long names on a small screen: the list's type shrinks before a stop is cut off
    const up = $("upcoming");
    let listPx = Math.max(22, Math.min(34, 2.6 * vw));
    ol.style.fontSize = listPx + "px";
    while (listPx > 16 && up.scrollHeight > up.clientHeight + 1) {
      listPx -= 2;
      ol.style.fontSize = listPx + "px";
    }

    // the ack button
    const btn = $("ack");
    let label;
    let cls = "";
    if (ackNote) {
      label = t(ackNote);
      cls = "failed";
    } else if (sending) {
      label = t("ack_sending");
      cls = "pending";
    } else if (!pageUp || !state || !state.broker) {
      label = t("ack_offline");
    } else if (ids.length === 0) {
      label = t("ack_none");
    } else if (unacked.length === 0) {
      label = t("ack_done");
      cls = "done";
    } else {
      label = t("ack", { n: unacked.length });
      cls = "pending";
    }
    btn.className = cls;
    btn.disabled = sending || !pageUp || !state || !state.broker || unacked.length === 0;
    btn.dataset.ids = ids.join(" ");
    $("ack-label").textContent = label;
  }

  function setPill(id, ok) {
    const p = $(id);
    p.classList.toggle("ok", ok === true);
    p.classList.toggle("down", ok === false);
  }

  function note(key) {
    ackNote = key;
    clearTimeout(ackNoteTimer);
    ackNoteTimer = setTimeout(() => { ackNote = null; render(); }, 4000);
  }

  async function ack() {
    if (sending || shownIds.length === 0) return;
    sending = true;
    render();
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    try {
      const r = await fetch("ack", {
        method: "POST",
        headers,
        body: JSON.stringify({ request_ids: shownIds }),
      });
      // 409: none of these requests is live any more; the next model shows that
      if (!r.ok && r.status !== 409) note("ack_failed");
      else if (r.ok) {
        const body = await r.json();
        if (state) state.acked = [...new Set([...state.acked, ...body.acked])];
      }
    } catch (e) {
      note("ack_failed");
    } finally {
      sending = false;
      render();
    }
  }

  $("ack").addEventListener("click", ack);
  $("lang").addEventListener("click", () => {
    lang = lang === "ko" ? "en" : "ko";
    localStorage.setItem(LANG_KEY, lang);
    applyLang();
  });
  window.addEventListener("resize", render);
  applyLang();
  connect();
})();
