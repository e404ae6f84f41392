// Banterbox client for browsers and Node 20: one WebSocket, answers routed by request id. No DOM.
//
//   const bb = await Banterbox.connect("ws://127.0.0.1:8765");
//   const turn = bb.generate({ messages: [{ role: "user", content: "Hi!" }], max_tokens: 32 });
//   turn.on("delta", (d) => console.log(d.text));
//   const done = await turn.result;
//
// Frames are plain objects exactly as protocol/SPEC.md writes them (snake_case fields).

import { decodeFrame, encodeFrame, FrameError } from "./frames.js";

export { decode, encode, Float, MsgpackError } from "./msgpack.js";
export { decodeFrame, encodeFrame, FrameError };

export const PROTOCOL_VERSION = 1;
export const CONNECTION_CLOSED = "connection_closed"; // a client-side code: the socket went away

// Frames that belong to a request without ending it; any other frame with its id ends it.
const PROGRESS = {
  generate: new Set(["delta"]),
  "npc.say": new Set(["delta", "npc.emotion", "npc.action", "npc.session"]),
};
// Errors that carry the id of a request they do not end (SPEC §5, error). A cancel's
// unknown_request names a request that already ended, so it reaches no pending one; the same
// code answering a plugin frame (npc.interrupt of a finished turn) does end that frame's request.
const NOT_ENDING = new Set(["duplicate_request_id"]);

export class BanterboxError extends Error {
  name = "BanterboxError";

  constructor(code, message, { retryable = false, frame = null } = {}) {
    super(`${code}: ${message}`);
    this.code = code;
    this.retryable = retryable;
    this.frame = frame;
  }

  static of(frame) {
    return new BanterboxError(frame.code, frame.message, { retryable: frame.retryable, frame });
  }
}

/** Listeners by frame type, "*" for all. */
class Listeners {
  #byType = new Map();

  on(type, listener) {
    if (!this.#byType.has(type)) this.#byType.set(type, new Set());
    this.#byType.get(type).add(listener);
    return () => this.#byType.get(type).delete(listener);
  }

  emit(type, value) {
    for (const key of [type, "*"]) {
      for (const listener of this.#byType.get(key) ?? []) listener(value);
    }
  }
}

/** One request's answer: its frames as events, in order, ended by one final frame. */
export class Request {
  #client;
  #listeners = new Listeners();
  #queue = [];
  #wake = null;
  #ended = false;
  #error = null;

  constructor(client, frame, progress) {
    this.#client = client;
    this.id = frame.id;
    this.type = frame.type;
    this.progress = progress;
    this.text = ""; // the deltas' text so far
    this.frames = [];
    this.result = new Promise((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    this.result.catch(() => {}); // a request nobody awaits must not crash Node
  }

  /** Calls listener(frame) for each frame of this type ("*": every frame); returns an off(). */
  on(type, listener) {
    return this.#listeners.on(type, listener);
  }

  /** Cancels a running generate; it still ends with its done ("cancelled"). */
  cancel() {
    if (!this.#ended) this.#client.send({ type: "cancel", id: this.id });
  }

  async *[Symbol.asyncIterator]() {
    for (;;) {
      while (this.#queue.length) yield this.#queue.shift();
      if (this.#ended) break;
      await new Promise((wake) => {
        this.#wake = wake;
      });
    }
    if (this.#error) throw this.#error;
  }

  _receive(frame) {
    this.frames.push(frame);
    if (frame.type === "delta") this.text += frame.text;
    if (frame.type === "error") return this._fail(BanterboxError.of(frame));
    this.#push(frame);
    this.#listeners.emit(frame.type, frame);
    if (this.progress.has(frame.type)) return false;
    this.#ended = true;
    this.resolve(frame);
    this.#wakeUp();
    return true;
  }

  _fail(error) {
    this.#ended = true;
    this.#error = error;
    this.reject(error);
    this.#wakeUp();
    return true;
  }

  #push(frame) {
    this.#queue.push(frame);
    this.#wakeUp();
  }

  #wakeUp() {
    const wake = this.#wake;
    this.#wake = null;
    if (wake) wake();
  }
}

export class Banterbox {
  #ws;
  #encoding;
  #pending = new Map();
  #listeners = new Listeners();
  #nextId = 0;

  constructor(ws, encoding, welcome) {
    this.#ws = ws;
    this.#encoding = encoding;
    this.welcome = welcome;
    this.closed = new Promise((resolve) => {
      ws.addEventListener("close", (event) => {
        const error = new BanterboxError(CONNECTION_CLOSED, `closed (${event.code})`, {
          retryable: true,
        });
        for (const request of this.#pending.values()) request._fail(error);
        this.#pending.clear();
        const info = { code: event.code, reason: event.reason };
        this.#listeners.emit("close", info);
        resolve(info);
      });
    });
    ws.addEventListener("message", (event) => this.#receive(event.data));
  }

  /**
   * Opens a socket, says hello and waits for welcome. Options: apiKey, client (a name for the
   * server's logs), encoding ("json" or "msgpack"), WebSocket (a constructor, for a Node
   * without a global one), timeoutMs.
   */
  static async connect(url, options = {}) {
    const {
      apiKey,
      client = "banterbox-js/0.1",
      encoding = "json",
      WebSocket = globalThis.WebSocket,
      timeoutMs = 10_000,
    } = options;
    if (!WebSocket) {
      throw new Error("no WebSocket: run Node 20 with --experimental-websocket, or pass one");
    }
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    // The hello's listeners go once it is settled: the connection's own take over.
    const settled = new AbortController();
    const { signal } = settled;
    const welcome = await new Promise((resolve, reject) => {
      const fail = (error) => {
        ws.close();
        reject(error);
      };
      const timer = setTimeout(() => fail(new Error(`no welcome within ${timeoutMs} ms`)), timeoutMs);
      signal.addEventListener("abort", () => clearTimeout(timer));
      ws.addEventListener(
        "open",
        () => {
          const hello = { type: "hello", protocol: PROTOCOL_VERSION, client, api_key: apiKey };
          ws.send(encodeFrame(hello, encoding));
        },
        { signal },
      );
      ws.addEventListener("error", () => fail(new Error(`cannot connect to ${url}`)), { signal });
      const closed = (e) => fail(new BanterboxError(CONNECTION_CLOSED, `closed (${e.code})`));
      ws.addEventListener("close", closed, { signal });
      ws.addEventListener(
        "message",
        (event) => {
          let frame;
          try {
            frame = decodeFrame(event.data);
          } catch (error) {
            return fail(error); // thrown out of a listener, it would end a Node process
          }
          if (frame.type === "welcome") return resolve(frame);
          return fail(frame.type === "error" ? BanterboxError.of(frame) : new FrameError(frame.type));
        },
        { signal },
      );
    }).finally(() => settled.abort());
    return new Banterbox(ws, encoding, welcome);
  }

  /** Listens to frames no request waits on (plugin events, late errors), by type or "*";
   * "close" hears the socket close. Returns an off(). */
  on(type, listener) {
    return this.#listeners.on(type, listener);
  }

  /** Sends any request frame; its answer frames come to the returned Request. */
  request(type, payload = {}, { id, progress } = {}) {
    const frame = { type, ...payload, id: id ?? payload.id ?? this.#newId() };
    if (this.#pending.has(frame.id)) throw new Error(`request id ${frame.id} is in flight`);
    const request = new Request(this, frame, new Set(progress ?? PROGRESS[type] ?? []));
    this.#pending.set(frame.id, request);
    try {
      this.send(frame);
    } catch (error) {
      this.#pending.delete(frame.id);
      throw error;
    }
    return request;
  }

  /** request() for frames answered by one frame: resolves with it (rejects on error). */
  call(type, payload = {}, options = {}) {
    return this.request(type, payload, options).result;
  }

  /** A streamed turn: `delta` frames, then `done`. Fields as in SPEC §4 generate. */
  generate(params) {
    return this.request("generate", params);
  }

  score(params) {
    return this.call("score", params);
  }

  openSession({ session_id, metadata } = {}) {
    return this.call("session.open", { session_id, metadata });
  }

  resumeSession(sessionId) {
    return this.call("session.resume", { session_id: sessionId });
  }

  closeSession(sessionId) {
    return this.call("session.close", { session_id: sessionId });
  }

  /** Cancels the request with this id (or a Request). */
  cancel(request) {
    this.send({ type: "cancel", id: typeof request === "string" ? request : request.id });
  }

  /** Sends one frame as it is, in this connection's encoding (or the one given). */
  send(frame, encoding = this.#encoding) {
    this.#ws.send(encodeFrame(frame, encoding));
  }

  /** Sends a message as it is (a string or bytes): for tests of the server's refusals. */
  sendRaw(data) {
    this.#ws.send(data);
  }

  close(code = 1000, reason = "") {
    this.#ws.close(code, reason);
    return this.closed;
  }

  #newId() {
    this.#nextId += 1;
    return `js-${this.#nextId}`;
  }

  #receive(data) {
    let frame;
    try {
      frame = decodeFrame(data);
    } catch (error) {
      this.#listeners.emit("malformed", error);
      return;
    }
    const request = typeof frame.id === "string" ? this.#pending.get(frame.id) : undefined;
    const ends = !(frame.type === "error" && NOT_ENDING.has(frame.code));
    if (request === undefined || !ends) {
      this.#listeners.emit(frame.type, frame);
      return;
    }
    if (request._receive(frame)) this.#pending.delete(frame.id);
  }
}
