// The client against a live server: BANTERBOX_URL (tests/clients/test_js_client.py starts one
// on the tiny model with the chat, npc and moderation plugins).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import { Banterbox, BanterboxError } from "../banterbox.js";

const URL_ = process.env.BANTERBOX_URL;
const NO_EOS = { logit_bias: { 258: -100 } }; // the tiny model's <|im_end|>: runs to max_tokens
const INVALID = new URL("../../../protocol/vectors/invalid/", import.meta.url);

const frameOf = (promise) =>
  promise.then(
    (frame) => frame,
    (error) => error,
  );

describe("a live server", { skip: URL_ ? false : "set BANTERBOX_URL" }, () => {
  for (const encoding of ["json", "msgpack"]) {
    test(`${encoding}: hello, welcome, a streamed turn`, async () => {
      const bb = await Banterbox.connect(URL_, { encoding, client: "js-test/1" });
      assert.equal(bb.welcome.protocol, 1);
      assert.ok(bb.welcome.capabilities.includes("npc"), bb.welcome.capabilities);
      const turn = bb.generate({ prompt: "Hello", max_tokens: 8, sampling: NO_EOS });
      const seen = [];
      turn.on("delta", (d) => seen.push(d));
      const done = await turn.result;
      assert.equal(done.type, "done");
      assert.equal(done.finish_reason, "length");
      assert.equal(done.usage.completion_tokens, 8);
      assert.deepEqual(seen.map((d) => d.seq), [...seen.keys()]);
      assert.equal(turn.text, seen.map((d) => d.text).join(""));
      const iterated = [];
      for await (const frame of bb.generate({ prompt: "Hi", max_tokens: 3, sampling: NO_EOS })) {
        iterated.push(frame.type);
      }
      assert.equal(iterated.at(-1), "done");
      await bb.close();
    });
  }

  test("sessions: open, a turn, resume, close, then not found", async () => {
    const bb = await Banterbox.connect(URL_);
    const opened = await bb.openSession({ session_id: "js-s1", metadata: { who: "test" } });
    assert.deepEqual([opened.type, opened.session_id, opened.resumed], ["session", "js-s1", false]);
    const messages = [{ role: "user", content: "Hi" }];
    await bb.generate({ session_id: "js-s1", messages, max_tokens: 4 }).result;
    const resumed = await bb.resumeSession("js-s1");
    assert.deepEqual([resumed.resumed, resumed.num_turns], [true, 1]);
    assert.equal((await bb.closeSession("js-s1")).type, "session.closed");
    const lost = await frameOf(bb.resumeSession("js-s1"));
    assert.ok(lost instanceof BanterboxError);
    assert.equal(lost.code, "session_not_found");
    await bb.close();
  });

  test("cancel ends a turn with done cancelled", async () => {
    const bb = await Banterbox.connect(URL_, { encoding: "msgpack" });
    const turn = bb.generate({ prompt: "Once", max_tokens: 2000, sampling: NO_EOS });
    const off = turn.on("delta", () => {
      off();
      turn.cancel();
    });
    const done = await turn.result;
    assert.equal(done.finish_reason, "cancelled");
    assert.ok(done.usage.completion_tokens < 2000);
    await bb.close();
  });

  test("errors reject their request; the connection goes on", async () => {
    const bb = await Banterbox.connect(URL_);
    const bad = await frameOf(bb.generate({ prompt: "Hi", sampling: { temperature: -1 } }).result);
    assert.equal(bad.code, "invalid_field");
    assert.match(bad.message, /sampling\.temperature/);
    assert.equal(bad.retryable, false);
    const late = new Promise((resolve) => bb.on("error", resolve));
    bb.cancel("no-such-request");
    assert.equal((await late).code, "unknown_request");
    const ok = await bb.generate({ prompt: "Hi", max_tokens: 2 }).result;
    assert.equal(ok.type, "done");
    await bb.close();
  });

  test("the invalid vectors get their codes, as raw frames", async () => {
    const bb = await Banterbox.connect(URL_);
    const expected = JSON.parse(readFileSync(new URL("expected.json", INVALID), "utf8"));
    // A second hello and the npc frame (its plugin is on here) answer differently.
    const skip = new Set(["hello-v2.msgpack", "plugin-not-enabled.msgpack"]);
    for (const [file, code] of Object.entries(expected)) {
      if (skip.has(file)) continue;
      const raw = readFileSync(new URL(file, INVALID));
      const answer = new Promise((resolve) => {
        const off = bb.on("error", (frame) => {
          off();
          resolve(frame);
        });
      });
      bb.sendRaw(file.endsWith(".json") ? raw.toString("utf8") : new Uint8Array(raw));
      assert.equal((await answer).code, code, file);
    }
    await bb.close();
  });

  test("npc.say streams speech with typed events, routed by id; interrupt", async () => {
    const bb = await Banterbox.connect(URL_);
    const say = bb.request("npc.say", {
      npc: "blacksmith",
      player: "js",
      text: "Hello there",
      max_tokens: 24,
      seed: 1,
    });
    const events = [];
    say.on("*", (frame) => events.push(frame.type));
    const end = await say.result;
    // done, or npc.replaced when the random test model's line fails output moderation
    assert.ok(["done", "npc.replaced"].includes(end.type), end.type);
    assert.equal(events[0], "npc.session");
    for (const type of events) assert.ok(["npc.session", "delta", "npc.emotion", "npc.action", "done", "npc.replaced"].includes(type), type);
    assert.doesNotMatch(say.text, /\[|\]/);

    // A random model's turn may end before the interrupt lands: then it is tried again.
    let ended;
    for (let tries = 0; tries < 5 && ended?.type !== "npc.interrupted"; tries++) {
      const long = bb.request("npc.say", { npc: "blacksmith", player: "js", text: "Tell me everything", max_tokens: 400 });
      await Promise.race([new Promise((resolve) => long.on("delta", resolve)), long.result]);
      const heard = long.text.length;
      const cut = await frameOf(bb.call("npc.interrupt", { turn_id: long.id, heard_chars: heard }));
      ended = await long.result;
      if (ended.type !== "npc.interrupted") continue;
      assert.equal(cut.type, "npc.interrupted");
      assert.ok(ended.heard_chars <= heard);
    }
    assert.equal(ended.type, "npc.interrupted");
    const late = await frameOf(bb.call("npc.interrupt", { turn_id: "over", heard_chars: 1 }));
    assert.equal(late.code, "unknown_request"); // ends the interrupt's own request
    const typed = await bb.call("npc.typing", { npc: "blacksmith", player: "js", text: "So" });
    assert.equal(typed.type, "npc.typed");
    await bb.close();
  });

  test("moderation: a hold reaches a subscriber, then approve", async () => {
    const bot = await Banterbox.connect(URL_, { encoding: "msgpack" });
    const desk = await Banterbox.connect(URL_);
    const channel = "js-chan";
    const sub = await desk.call("mod.subscribe", { channel });
    assert.equal(sub.subscribed, true);
    const policy = await bot.call("mod.config", { channel, op: "set", policy: { hold_s: 60 } });
    assert.equal(policy.type, "mod.policy");
    const event = new Promise((resolve) => desk.on("mod.action", resolve));
    const user = { id: "u1", name: "U1", roles: [] };
    const verdict = await bot.call("mod.check", { channel, user, text: "your mom", message_id: "m1" });
    assert.equal(verdict.type, "mod.verdict");
    assert.equal(verdict.action, "hold");
    assert.equal((await event).message_id, "m1");
    const holds = await desk.call("mod.review", { channel, op: "list" });
    assert.deepEqual(holds.holds.map((h) => h.message_id), ["m1"]);
    const ok = await desk.call("mod.review", { channel, op: "approve", message_id: "m1" });
    assert.deepEqual([ok.decision, ok.action], ["approve", "allow"]);
    await Promise.all([bot.close(), desk.close()]);
  });

  test("a wrong request id reuse is refused locally", async () => {
    const bb = await Banterbox.connect(URL_);
    const turn = bb.generate({ id: "same", prompt: "Hi", max_tokens: 50, sampling: NO_EOS });
    assert.throws(() => bb.generate({ id: "same", prompt: "Hi" }), /in flight/);
    turn.cancel();
    await turn.result;
    await bb.close();
  });
});
