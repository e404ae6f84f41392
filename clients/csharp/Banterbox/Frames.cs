// Banterbox frames to and from WebSocket messages: JSON text or msgpack binary. Pure: no sockets.
using System;

namespace Banterbox
{
    public static class Frames
    {
        public static MsgMap Check(object value)
        {
            var frame = value as MsgMap;
            if (frame == null) throw new FormatException("malformed frame: not a map");
            if (!(frame["type"] is string)) throw new FormatException("a frame without a string type");
            return frame;
        }

        public static MsgMap Decode(byte[] msgpack) { return Check(Msgpack.Decode(msgpack)); }

        public static MsgMap Decode(string json) { return Check(Json.Parse(json)); }
    }
}
