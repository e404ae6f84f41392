// A small msgpack codec (the whole format but ext) for Banterbox frames. Pure: no sockets, no DOM.

const MAX_DEPTH = 512; // deeper input is refused, not a stack overflow (the server allows 16)
const SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** A number to send as float64 even when it is integral (JS has one number type). */
export class Float {
  constructor(value) {
    this.value = Number(value);
  }
}

export class MsgpackError extends Error {
  name = "MsgpackError";
}

class Writer {
  constructor() {
    this.bytes = new Uint8Array(256);
    this.view = new DataView(this.bytes.buffer);
    this.length = 0;
  }

  reserve(n) {
    if (this.length + n <= this.bytes.length) return;
    const grown = new Uint8Array(Math.max(this.bytes.length * 2, this.length + n));
    grown.set(this.bytes.subarray(0, this.length));
    this.bytes = grown;
    this.view = new DataView(grown.buffer);
  }

  u8(...values) {
    this.reserve(values.length);
    for (const v of values) this.bytes[this.length++] = v;
  }

  put(setter, size, value) {
    this.reserve(size);
    this.view[setter](this.length, value);
    this.length += size;
  }

  raw(chunk) {
    this.reserve(chunk.length);
    this.bytes.set(chunk, this.length);
    this.length += chunk.length;
  }
}

function writeHeader(w, n, fix, fixMax, codes) {
  if (fix !== null && n <= fixMax) return w.u8(fix | n);
  const [c8, c16, c32] = codes;
  if (c8 !== null && n < 0x100) return w.u8(c8, n);
  if (n < 0x10000) return w.u8(c16), w.put("setUint16", 2, n);
  return w.u8(c32), w.put("setUint32", 4, n);
}

function writeInt(w, n) {
  // n: a BigInt, written in its shortest form (as the reference codec does).
  if (n >= 0n) {
    if (n < 0x80n) return w.u8(Number(n));
    if (n < 0x100n) return w.u8(0xcc, Number(n));
    if (n < 0x10000n) return w.u8(0xcd), w.put("setUint16", 2, Number(n));
    if (n < 0x100000000n) return w.u8(0xce), w.put("setUint32", 4, Number(n));
    if (n < 1n << 64n) return w.u8(0xcf), w.put("setBigUint64", 8, n);
  } else {
    if (n >= -32n) return w.u8(Number(n) & 0xff);
    if (n >= -0x80n) return w.u8(0xd0), w.put("setInt8", 1, Number(n));
    if (n >= -0x8000n) return w.u8(0xd1), w.put("setInt16", 2, Number(n));
    if (n >= -0x80000000n) return w.u8(0xd2), w.put("setInt32", 4, Number(n));
    if (n >= -(1n << 63n)) return w.u8(0xd3), w.put("setBigInt64", 8, n);
  }
  throw new MsgpackError(`integer ${n} does not fit 64 bits`);
}

function writeFloat(w, x) {
  if (!Number.isFinite(x)) throw new MsgpackError(`${x} is not allowed in a frame`);
  w.u8(0xcb);
  w.put("setFloat64", 8, x);
}

function writeMap(w, entries, depth) {
  writeHeader(w, entries.length, 0x80, 15, [null, 0xde, 0xdf]);
  for (const [key, value] of entries) {
    write(w, key, depth);
    write(w, value, depth);
  }
}

function write(w, value, depth) {
  if (depth > MAX_DEPTH) throw new MsgpackError("nested too deep");
  if (value === null || value === undefined) return w.u8(0xc0);
  if (value === false || value === true) return w.u8(value ? 0xc3 : 0xc2);
  if (typeof value === "number") {
    return Number.isSafeInteger(value) ? writeInt(w, BigInt(value)) : writeFloat(w, value);
  }
  if (typeof value === "bigint") return writeInt(w, value);
  if (typeof value === "string") {
    const bytes = utf8.encode(value);
    writeHeader(w, bytes.length, 0xa0, 31, [0xd9, 0xda, 0xdb]);
    return w.raw(bytes);
  }
  if (value instanceof Float) return writeFloat(w, value.value);
  if (value instanceof Uint8Array) {
    writeHeader(w, value.length, null, 0, [0xc4, 0xc5, 0xc6]);
    return w.raw(value);
  }
  if (Array.isArray(value)) {
    writeHeader(w, value.length, 0x90, 15, [null, 0xdc, 0xdd]);
    for (const item of value) write(w, item, depth + 1);
    return undefined;
  }
  if (value instanceof Map) return writeMap(w, [...value], depth + 1);
  if (typeof value === "object") {
    // Like JSON.stringify: a field whose value is undefined is left out.
    const entries = Object.entries(value).filter(([, v]) => v !== undefined);
    return writeMap(w, entries, depth + 1);
  }
  throw new MsgpackError(`cannot encode a ${typeof value}`);
}

/** value -> msgpack bytes. Integers in their shortest form, other numbers as float64. */
export function encode(value) {
  const w = new Writer();
  write(w, value, 0);
  return w.bytes.slice(0, w.length);
}

class Reader {
  constructor(bytes, exact) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.offset = 0;
    this.exact = exact;
  }

  take(n) {
    if (this.offset + n > this.bytes.length) throw new MsgpackError("truncated");
    const start = this.offset;
    this.offset += n;
    return start;
  }

  get(getter, size) {
    return this.view[getter](this.take(size));
  }

  int(big) {
    // Exact in JS when below 2^53; a BigInt past that (seeds may be that large).
    return big >= -SAFE && big <= SAFE ? Number(big) : big;
  }

  float(x) {
    return this.exact ? new Float(x) : x;
  }

  str(n) {
    const start = this.take(n);
    try {
      return strictUtf8.decode(this.bytes.subarray(start, start + n));
    } catch {
      throw new MsgpackError("a str that is not valid UTF-8");
    }
  }

  bin(n) {
    const start = this.take(n);
    return this.bytes.slice(start, start + n);
  }

  array(n, depth) {
    const out = [];
    for (let i = 0; i < n; i++) out.push(this.value(depth + 1));
    return out;
  }

  map(n, depth) {
    if (this.exact) {
      const out = new Map();
      for (let i = 0; i < n; i++) out.set(this.value(depth + 1), this.value(depth + 1));
      return out;
    }
    const out = {};
    for (let i = 0; i < n; i++) {
      const key = this.value(depth + 1);
      if (typeof key !== "string" && typeof key !== "number" && typeof key !== "bigint") {
        throw new MsgpackError("a map key that is not a string or an integer");
      }
      // defineProperty: a "__proto__" key is data, never the object's prototype.
      Object.defineProperty(out, String(key), {
        value: this.value(depth + 1),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
    return out;
  }

  value(depth) {
    if (depth > MAX_DEPTH) throw new MsgpackError("nested too deep");
    const b = this.bytes[this.take(1)];
    if (b <= 0x7f) return b;
    if (b >= 0xe0) return b - 0x100;
    if (b <= 0x8f) return this.map(b & 0x0f, depth);
    if (b <= 0x9f) return this.array(b & 0x0f, depth);
    if (b <= 0xbf) return this.str(b & 0x1f);
    switch (b) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.bin(this.get("getUint8", 1));
      case 0xc5: return this.bin(this.get("getUint16", 2));
      case 0xc6: return this.bin(this.get("getUint32", 4));
      case 0xca: return this.float(this.get("getFloat32", 4));
      case 0xcb: return this.float(this.get("getFloat64", 8));
      case 0xcc: return this.get("getUint8", 1);
      case 0xcd: return this.get("getUint16", 2);
      case 0xce: return this.get("getUint32", 4);
      case 0xcf: return this.int(this.get("getBigUint64", 8));
      case 0xd0: return this.get("getInt8", 1);
      case 0xd1: return this.get("getInt16", 2);
      case 0xd2: return this.get("getInt32", 4);
      case 0xd3: return this.int(this.get("getBigInt64", 8));
      case 0xd9: return this.str(this.get("getUint8", 1));
      case 0xda: return this.str(this.get("getUint16", 2));
      case 0xdb: return this.str(this.get("getUint32", 4));
      case 0xdc: return this.array(this.get("getUint16", 2), depth);
      case 0xdd: return this.array(this.get("getUint32", 4), depth);
      case 0xde: return this.map(this.get("getUint16", 2), depth);
      case 0xdf: return this.map(this.get("getUint32", 4), depth);
      case 0xc1: throw new MsgpackError("reserved byte 0xc1");
      default: throw new MsgpackError(`ext type 0x${b.toString(16)} is not used by Banterbox`);
    }
  }
}

/**
 * msgpack bytes (Uint8Array or ArrayBuffer) -> value. Maps become plain objects; with
 * `{ exact: true }` they become Maps (key types kept) and floats `Float`s, so that
 * encode(decode(b, { exact: true })) gives back the same bytes.
 */
export function decode(data, { exact = false } = {}) {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  const reader = new Reader(bytes, exact);
  const value = reader.value(0);
  if (reader.offset !== bytes.length) throw new MsgpackError("bytes after the value");
  return value;
}
