// The playground page: NPC talk, a moderation console and live metrics over the JS client.
// Touches only this page's DOM and its own server (the socket and /metrics of this origin).

import { Banterbox } from "/sdk/banterbox.js";

const $ = (id) => document.getElementById(id);
const TYPING_PAUSE_MS = 400; // a pause this long in typing sends npc.typing (a prefill)
const METRICS_EVERY_MS = 2000;

let bb = null; // the connection, once welcome came
let saying = null; // the npc.say running now
let typingTimer = 0;
let nextMessage = 0;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function connect() {
  if (bb) bb.close();
  bb = null;
  status("connecting…");
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
  const apiKey = $("api-key").value || undefined;
  try {
    bb = await Banterbox.connect(url, { apiKey, client: "playground/0.1" });
  } catch (error) {
    status(`not connected: ${error.message}`, true);
    return;
  }
  const { model, capabilities } = bb.welcome;
  const features = capabilities.filter((c) => !c.includes(".")); // plugin frame types aside
  status(`connected to ${model} (${features.join(", ")})`);
  bb.on("close", ({ code }) => status(`disconnected (${code}): press Connect`, true));
  bb.on("mod.action", showModAction);
  $("npc-off").hidden = capabilities.includes("npc");
  $("mod-off").hidden = capabilities.includes("moderation");
  if (capabilities.includes("moderation")) await subscribe();
}

// --- NPC ---------------------------------------------------------------------------------

function npcWho() {
  return { npc: $("npc-card").value, player: $("npc-player").value || "player" };
}

function addLine(kind, who, text = "") {
  const line = el("div", `line ${kind}`);
  line.append(el("span", "who", who), el("span", "text", text));
  $("npc-log").append(line);
  $("npc-log").scrollTop = $("npc-log").scrollHeight;
  return line;
}

function addEvent(line, className, text) {
  line.append(el("span", `event ${className}`, text));
  $("npc-log").scrollTop = $("npc-log").scrollHeight;
}

async function say(event) {
  event.preventDefault();
  const text = $("npc-input").value.trim();
  if (!bb || !text || saying) return;
  clearTimeout(typingTimer);
  $("npc-input").value = "";
  $("npc-typing").textContent = "";
  addLine("player", "You:", text);
  const line = addLine("npc", `${npcWho().npc}:`); // a sample card, or any card the server has
  const speech = line.querySelector(".text");
  const turn = bb.request("npc.say", { ...npcWho(), text });
  saying = turn;
  $("npc-interrupt").disabled = false;
  turn.on("npc.session", (s) => {
    if (s.greeting) addEvent(line, "", `new session: “${s.greeting}”`);
  });
  turn.on("delta", (d) => {
    speech.textContent += d.text;
  });
  turn.on("npc.emotion", (e) => addEvent(line, "emotion", `${e.emotion} ${e.intensity}`));
  turn.on("npc.action", (a) => addEvent(line, "action", `${a.name}(${JSON.stringify(a.args)})`));
  try {
    const end = await turn.result;
    if (end.type === "npc.interrupted") {
      speech.textContent = end.text;
      addEvent(line, "cut", `interrupted after ${end.heard_chars} chars`);
    } else if (end.type === "npc.refused" || end.type === "npc.replaced") {
      // Moderation (the card's [safety]): the player's line was blocked, or the reply failed
      // output moderation; the game shows the card's line instead of what streamed.
      speech.textContent = end.text;
      addEvent(line, "moderated", end.type === "npc.refused" ? "refused by moderation" : "replaced by moderation");
    } else {
      addEvent(line, "", end.finish_reason);
    }
  } catch (error) {
    addEvent(line, "cut", error.message);
  } finally {
    saying = null;
    $("npc-interrupt").disabled = true;
    line.dataset.done = "true";
  }
}

async function interrupt() {
  if (!saying) return;
  const turn = saying;
  try {
    await bb.call("npc.interrupt", { turn_id: turn.id, heard_chars: turn.text.length });
  } catch (error) {
    $("npc-typing").textContent = error.message; // it ended on its own first
  }
}

function typing() {
  clearTimeout(typingTimer);
  const text = $("npc-input").value;
  if (!bb || !text.trim() || saying || !bb.welcome.capabilities.includes("npc")) return;
  typingTimer = setTimeout(async () => {
    try {
      const typed = await bb.call("npc.typing", { ...npcWho(), text });
      $("npc-typing").textContent = typed.prefilled ? "prefilled while you typed" : "";
    } catch (error) {
      $("npc-typing").textContent = error.message;
    }
  }, TYPING_PAUSE_MS);
}

// --- moderation ----------------------------------------------------------------------------

const channel = () => $("mod-channel").value || "playground";

function badge(action) {
  return el("span", `badge ${action}`, action);
}

async function subscribe() {
  try {
    await bb.call("mod.subscribe", { channel: channel() });
    $("mod-subscribed").textContent = `live feed of #${channel()}`;
    await Promise.all([refreshHolds(), loadPolicy()]);
  } catch (error) {
    $("mod-subscribed").textContent = error.message;
  }
}

function showModAction(event) {
  if (event.channel !== channel()) return;
  const item = el("li");
  const what = event.kind === "review" ? `${event.decision} by ${event.moderator}` : "";
  item.append(badge(event.action), el("span", "text", `${event.user_name || event.user_id}: ${event.text} ${what}`));
  $("mod-feed").prepend(item);
  refreshHolds();
}

async function refreshHolds() {
  if (!bb) return;
  const { holds } = await bb.call("mod.review", { channel: channel(), op: "list" });
  const list = $("mod-holds");
  list.replaceChildren();
  for (const held of holds) {
    const item = el("li");
    item.dataset.messageId = held.message_id;
    const approve = el("button", "approve", "Approve");
    const deny = el("button", "deny", "Deny");
    approve.onclick = () => review(held.message_id, "approve");
    deny.onclick = () => review(held.message_id, "deny");
    item.append(el("span", "text", `${held.user_name || held.user_id}: ${held.text}`), approve, deny);
    list.append(item);
  }
  if (!holds.length) list.append(el("li", "note", "nothing held"));
}

async function review(messageId, op) {
  try {
    const done = await bb.call("mod.review", { channel: channel(), op, message_id: messageId, moderator: "playground" });
    $("mod-verdict").textContent = `${messageId}: ${done.decision} → ${done.action}`;
  } catch (error) {
    $("mod-verdict").textContent = error.message;
  }
  await refreshHolds();
}

async function check(event) {
  event.preventDefault();
  const text = $("mod-text").value;
  if (!bb || !text) return;
  const userId = $("mod-user").value || "viewer";
  nextMessage += 1;
  const message = { message_id: `pg-${Date.now()}-${nextMessage}`, text };
  try {
    const verdict = await bb.call("mod.check", { channel: channel(), user: { id: userId, name: userId, roles: [] }, ...message });
    const reasons = (verdict.reasons ?? []).map((r) => r.name).join(", ");
    $("mod-verdict").replaceChildren(badge(verdict.action), ` ${reasons}`);
  } catch (error) {
    $("mod-verdict").textContent = error.message;
  }
}

async function loadPolicy() {
  const { policy } = await bb.call("mod.config", { channel: channel(), op: "get" });
  $("mod-policy").value = JSON.stringify(policy, null, 2);
}

async function savePolicy() {
  try {
    const policy = JSON.parse($("mod-policy").value);
    const saved = await bb.call("mod.config", { channel: channel(), op: "set", policy });
    $("mod-policy").value = JSON.stringify(saved.policy, null, 2);
    $("mod-policy-status").textContent = "saved";
  } catch (error) {
    $("mod-policy-status").textContent = error.message;
  }
}

// --- metrics -------------------------------------------------------------------------------

function parseMetrics(text) {
  const values = new Map();
  for (const line of text.split("\n")) {
    const match = /^([a-z_]+)(?:\{[^}]*\})? ([-+0-9.eE]+|NaN)$/.exec(line);
    if (match) values.set(match[1], (values.get(match[1]) ?? 0) + Number(match[2]));
  }
  return values;
}

const ms = (sum, count) => (count ? `${((1000 * sum) / count).toFixed(1)} ms` : "–");

async function pollMetrics() {
  const key = $("api-key").value;
  try {
    const answer = await fetch("/metrics", { headers: key ? { Authorization: `Bearer ${key}` } : {} });
    if (answer.status === 401) {
      $("metrics-status").textContent = "/metrics needs a key with the metrics or admin scope";
      return;
    }
    const m = parseMetrics(await answer.text());
    $("m-ttft").textContent = ms(m.get("banterbox_ttft_seconds_sum"), m.get("banterbox_ttft_seconds_count"));
    const itl = ["banterbox_inter_token_latency_seconds_sum", "banterbox_inter_token_latency_seconds_count"];
    $("m-itl").textContent = ms(m.get(itl[0]), m.get(itl[1]));
    $("m-running").textContent = m.get("banterbox_running_sequences") ?? "–";
    $("m-waiting").textContent = m.get("banterbox_queue_depth") ?? "–";
    const kv = m.get("banterbox_kv_usage_ratio");
    $("m-kv").textContent = kv === undefined ? "–" : `${(100 * kv).toFixed(1)} %`;
    $("m-connections").textContent = m.get("banterbox_connections") ?? "–";
    $("metrics-status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    $("metrics-status").textContent = error.message;
  }
}

$("connect-form").addEventListener("submit", (event) => {
  event.preventDefault();
  connect();
});
$("npc-form").addEventListener("submit", say);
$("npc-input").addEventListener("input", typing);
$("npc-interrupt").addEventListener("click", interrupt);
$("mod-form").addEventListener("submit", check);
$("mod-refresh").addEventListener("click", refreshHolds);
$("mod-load").addEventListener("click", loadPolicy);
$("mod-save").addEventListener("click", savePolicy);
$("mod-channel").addEventListener("change", () => bb && subscribe());
connect();
pollMetrics();
setInterval(pollMetrics, METRICS_EVERY_MS);
