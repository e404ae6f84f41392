// The codec against every golden frame in protocol/vectors (and the invalid ones): no server.

import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { test } from "node:test";

import { decode, decodeFrame, encode, encodeFrame, Float } from "../banterbox.js";

const VECTORS = new URL("../../../protocol/vectors/", import.meta.url);
const INVALID = new URL("invalid/", VECTORS);
const names = readdirSync(VECTORS).filter((n) => n.endsWith(".msgpack")).map((n) => n.slice(0, -8));

// JSON has no integer keys: the vectors write msgpack's integer keys as decimal strings.
const asJson = (value) => JSON.parse(JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? String(v) : v)));

test("there are vectors to test", () => {
  assert.ok(names.length >= 20, names.join(", "));
});

for (const name of names) {
  const bytes = new Uint8Array(readFileSync(new URL(`${name}.msgpack`, VECTORS)));
  const text = readFileSync(new URL(`${name}.json`, VECTORS), "utf8");

  test(`${name}: the .msgpack decodes to the .json frame`, () => {
    assert.deepEqual(asJson(decodeFrame(bytes)), JSON.parse(text));
    assert.deepEqual(decodeFrame(text), JSON.parse(text));
  });

  test(`${name}: exact decode then encode gives back the same bytes`, () => {
    assert.deepEqual(encode(decode(bytes, { exact: true })), bytes);
  });

  test(`${name}: a plain frame survives both encodings`, () => {
    const frame = decodeFrame(bytes);
    assert.deepEqual(decodeFrame(encodeFrame(frame, "msgpack")), frame);
    assert.deepEqual(decodeFrame(encodeFrame(asJson(frame), "json")), asJson(frame));
  });
}

const expected = JSON.parse(readFileSync(new URL("expected.json", INVALID), "utf8"));
for (const [file, code] of Object.entries(expected)) {
  test(`invalid/${file} (${code}): refused by the codec when malformed, never a crash`, () => {
    const raw = readFileSync(new URL(file, INVALID));
    const data = file.endsWith(".json") ? raw.toString("utf8") : new Uint8Array(raw);
    if (code === "malformed_frame") {
      assert.throws(() => decodeFrame(data), { name: "FrameError" });
      return;
    }
    try {
      decodeFrame(data); // a frame the server refuses by its fields, not its encoding
    } catch (error) {
      assert.equal(error.name, "FrameError", String(error));
    }
  });
}

test("integers take their shortest form; floats stay float64", () => {
  assert.deepEqual(encode(5), Uint8Array.of(0x05));
  assert.deepEqual(encode(-1), Uint8Array.of(0xff));
  assert.deepEqual(encode(200), Uint8Array.of(0xcc, 200));
  assert.deepEqual(encode(-200), Uint8Array.of(0xd1, 0xff, 0x38));
  assert.equal(encode(1.5)[0], 0xcb);
  assert.equal(encode(new Float(1))[0], 0xcb);
  assert.equal(decode(encode(2 ** 40)), 2 ** 40);
});

test("integers past 2^53 travel as BigInt", () => {
  const seed = 2n ** 63n - 1n;
  assert.equal(decode(encode(seed)), seed);
  assert.equal(decode(encode(-(2n ** 63n))), -(2n ** 63n));
  assert.throws(() => encode(2n ** 64n), { name: "MsgpackError" });
  assert.throws(() => encodeFrame({ type: "generate", seed }, "json"), { name: "FrameError" });
});

test("strings, sizes and nesting", () => {
  for (const n of [0, 31, 32, 255, 256, 65535, 65536]) {
    const s = "é".repeat(n);
    assert.equal(decode(encode(s)), s);
    assert.equal(decode(encode(Array(n).fill(1))).length, n);
  }
  const frame = { type: "x", a: { b: [1, null, true, false, "", 0.25] }, skipped: undefined };
  assert.deepEqual(decode(encode(frame)), { type: "x", a: { b: [1, null, true, false, "", 0.25] } });
  assert.deepEqual(decode(encode(new Uint8Array([1, 2]))), new Uint8Array([1, 2]));
});

test("hostile input is refused, never a crash or a polluted prototype", () => {
  assert.throws(() => decode(Uint8Array.of(0xc1)), { name: "MsgpackError" });
  assert.throws(() => decode(Uint8Array.of(0xa3, 0x61)), /truncated/);
  assert.throws(() => decode(Uint8Array.of(0x01, 0x02)), /after the value/);
  assert.throws(() => decode(Uint8Array.of(0xa1, 0xff)), /UTF-8/);
  assert.throws(() => decode(Uint8Array.of(0xd4, 0x01, 0x00)), /ext/);
  assert.throws(() => decode(new Uint8Array(100_000).fill(0x91)), /deep/);
  assert.throws(() => decode(Uint8Array.of(0xdd, 0xff, 0xff, 0xff, 0xff)), /truncated/);
  const evil = decode(encode(new Map([["__proto__", { polluted: true }]])));
  assert.equal({}.polluted, undefined);
  assert.deepEqual(Object.keys(evil), ["__proto__"]);
  assert.throws(() => encode(Number.NaN), { name: "MsgpackError" });
  assert.throws(() => decodeFrame("[1]"), { name: "FrameError" });
  assert.throws(() => decodeFrame(encode({ id: "x" })), { name: "FrameError" });
});
