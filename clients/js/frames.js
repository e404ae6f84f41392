// Banterbox frames to and from WebSocket messages: JSON text or msgpack binary. Pure: no sockets.

import { decode, encode } from "./msgpack.js";

export class FrameError extends Error {
  name = "FrameError";
}

/** A frame (a plain object with a string `type`) -> a text message or msgpack bytes. */
export function encodeFrame(frame, encoding = "json") {
  if (frame === null || typeof frame !== "object" || typeof frame.type !== "string") {
    throw new FrameError("a frame is an object with a string type");
  }
  if (encoding === "msgpack") return encode(frame);
  if (encoding !== "json") throw new FrameError(`unknown encoding ${encoding}`);
  return JSON.stringify(frame, (_key, value) => {
    if (typeof value === "bigint") {
      throw new FrameError("a BigInt has no exact JSON form: send it in msgpack (SPEC §11)");
    }
    if (typeof value === "number" && !Number.isFinite(value)) {
      throw new FrameError(`${value} is not allowed in a frame`);
    }
    return value;
  });
}

/** A received message (string: JSON; ArrayBuffer or Uint8Array: msgpack) -> its frame. */
export function decodeFrame(data) {
  let frame;
  try {
    frame = typeof data === "string" ? JSON.parse(data) : decode(data);
  } catch (error) {
    throw new FrameError(`malformed frame: ${error.message}`);
  }
  if (frame === null || typeof frame !== "object" || Array.isArray(frame)) {
    throw new FrameError("malformed frame: not a map");
  }
  if (typeof frame.type !== "string") throw new FrameError("a frame without a string type");
  return frame;
}
