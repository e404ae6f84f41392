// A msgpack codec (the whole format but ext) for Banterbox frames. Pure: no sockets, no Unity.
//
// Values: null, bool, long (ulong past long.MaxValue), double, string, byte[], List<object>
// and MsgMap (an ordered map: encode(decode(b)) gives back the same bytes).
using System;
using System.Collections.Generic;
using System.IO;
using System.Text;

namespace Banterbox
{
    public class MsgpackException : FormatException
    {
        public MsgpackException(string message) : base(message) { }
    }

    /// <summary>A map that keeps its keys' order and types (strings, or integers in msgpack).</summary>
    public class MsgMap : List<KeyValuePair<object, object>>
    {
        public object this[string key]
        {
            get
            {
                foreach (var pair in this)
                    if (key.Equals(pair.Key as string)) return pair.Value;
                return null;
            }
            set
            {
                for (int i = 0; i < Count; i++)
                    if (key.Equals(this[i].Key as string)) { this[i] = new KeyValuePair<object, object>(key, value); return; }
                Add(new KeyValuePair<object, object>(key, value));
            }
        }

        public bool Has(string key)
        {
            foreach (var pair in this)
                if (key.Equals(pair.Key as string)) return true;
            return false;
        }

        public string Str(string key) { return this[key] as string; }
    }

    public static class Msgpack
    {
        public const int MaxDepth = 512; // deeper input is refused, not a stack overflow
        static readonly UTF8Encoding Utf8 = new UTF8Encoding(false, true);

        public static byte[] Encode(object value)
        {
            var stream = new MemoryStream();
            Write(stream, value, 0);
            return stream.ToArray();
        }

        public static object Decode(byte[] bytes)
        {
            int offset = 0;
            object value = Read(bytes, ref offset, 0);
            if (offset != bytes.Length) throw new MsgpackException("bytes after the value");
            return value;
        }

        // --- writing -----------------------------------------------------------------------

        static void Big(Stream s, ulong v, int size)
        {
            for (int i = size - 1; i >= 0; i--) s.WriteByte((byte)(v >> (8 * i)));
        }

        static void Header(Stream s, int n, int fix, int fixMax, int c8, int c16, int c32)
        {
            if (fix >= 0 && n <= fixMax) { s.WriteByte((byte)(fix | n)); return; }
            if (c8 >= 0 && n < 0x100) { s.WriteByte((byte)c8); s.WriteByte((byte)n); return; }
            if (n < 0x10000) { s.WriteByte((byte)c16); Big(s, (ulong)n, 2); return; }
            s.WriteByte((byte)c32); Big(s, (ulong)n, 4);
        }

        static void WriteInt(Stream s, long n)
        {
            // The shortest form, as the reference codec writes it.
            if (n >= 0) { WriteUInt(s, (ulong)n); return; }
            if (n >= -32) { s.WriteByte((byte)(sbyte)n); return; }
            if (n >= sbyte.MinValue) { s.WriteByte(0xd0); Big(s, (ulong)n, 1); return; }
            if (n >= short.MinValue) { s.WriteByte(0xd1); Big(s, (ulong)n, 2); return; }
            if (n >= int.MinValue) { s.WriteByte(0xd2); Big(s, (ulong)n, 4); return; }
            s.WriteByte(0xd3); Big(s, (ulong)n, 8);
        }

        static void WriteUInt(Stream s, ulong n)
        {
            if (n < 0x80) { s.WriteByte((byte)n); return; }
            if (n < 0x100) { s.WriteByte(0xcc); Big(s, n, 1); return; }
            if (n < 0x10000) { s.WriteByte(0xcd); Big(s, n, 2); return; }
            if (n < 0x100000000) { s.WriteByte(0xce); Big(s, n, 4); return; }
            s.WriteByte(0xcf); Big(s, n, 8);
        }

        static void Write(Stream s, object value, int depth)
        {
            if (depth > MaxDepth) throw new MsgpackException("nested too deep");
            if (value == null) { s.WriteByte(0xc0); return; }
            if (value is bool) { s.WriteByte((bool)value ? (byte)0xc3 : (byte)0xc2); return; }
            if (value is int) { WriteInt(s, (int)value); return; }
            if (value is long) { WriteInt(s, (long)value); return; }
            if (value is ulong) { WriteUInt(s, (ulong)value); return; }
            if (value is float) { WriteDouble(s, (float)value); return; }
            if (value is double) { WriteDouble(s, (double)value); return; }
            var str = value as string;
            if (str != null)
            {
                var bytes = Utf8.GetBytes(str);
                Header(s, bytes.Length, 0xa0, 31, 0xd9, 0xda, 0xdb);
                s.Write(bytes, 0, bytes.Length);
                return;
            }
            var bin = value as byte[];
            if (bin != null)
            {
                Header(s, bin.Length, -1, 0, 0xc4, 0xc5, 0xc6);
                s.Write(bin, 0, bin.Length);
                return;
            }
            var map = value as MsgMap;
            if (map != null)
            {
                Header(s, map.Count, 0x80, 15, -1, 0xde, 0xdf);
                foreach (var pair in map) { Write(s, pair.Key, depth + 1); Write(s, pair.Value, depth + 1); }
                return;
            }
            var list = value as System.Collections.IList;
            if (list != null)
            {
                Header(s, list.Count, 0x90, 15, -1, 0xdc, 0xdd);
                foreach (var item in list) Write(s, item, depth + 1);
                return;
            }
            throw new MsgpackException("cannot encode a " + value.GetType().Name);
        }

        static void WriteDouble(Stream s, double d)
        {
            if (double.IsNaN(d) || double.IsInfinity(d)) throw new MsgpackException(d + " is not allowed in a frame");
            s.WriteByte(0xcb);
            Big(s, (ulong)BitConverter.DoubleToInt64Bits(d), 8);
        }

        // --- reading -----------------------------------------------------------------------

        static int Take(byte[] b, ref int offset, int n)
        {
            if (n < 0 || offset + (long)n > b.Length) throw new MsgpackException("truncated");
            int start = offset;
            offset += n;
            return start;
        }

        static ulong ReadBig(byte[] b, ref int offset, int size)
        {
            int start = Take(b, ref offset, size);
            ulong v = 0;
            for (int i = 0; i < size; i++) v = (v << 8) | b[start + i];
            return v;
        }

        static int Length(byte[] b, ref int offset, int size)
        {
            ulong n = ReadBig(b, ref offset, size);
            if (n > int.MaxValue) throw new MsgpackException("truncated");
            return (int)n;
        }

        static object Read(byte[] b, ref int offset, int depth)
        {
            if (depth > MaxDepth) throw new MsgpackException("nested too deep");
            int tag = b[Take(b, ref offset, 1)];
            if (tag <= 0x7f) return (long)tag;
            if (tag >= 0xe0) return (long)(tag - 0x100);
            if (tag <= 0x8f) return ReadMap(b, ref offset, tag & 0x0f, depth);
            if (tag <= 0x9f) return ReadArray(b, ref offset, tag & 0x0f, depth);
            if (tag <= 0xbf) return ReadStr(b, ref offset, tag & 0x1f);
            switch (tag)
            {
                case 0xc0: return null;
                case 0xc2: return false;
                case 0xc3: return true;
                case 0xc4: return ReadBin(b, ref offset, Length(b, ref offset, 1));
                case 0xc5: return ReadBin(b, ref offset, Length(b, ref offset, 2));
                case 0xc6: return ReadBin(b, ref offset, Length(b, ref offset, 4));
                case 0xca: return (double)BitConverter.ToSingle(BitConverter.GetBytes((uint)ReadBig(b, ref offset, 4)), 0);
                case 0xcb: return BitConverter.Int64BitsToDouble((long)ReadBig(b, ref offset, 8));
                case 0xcc: return (long)ReadBig(b, ref offset, 1);
                case 0xcd: return (long)ReadBig(b, ref offset, 2);
                case 0xce: return (long)ReadBig(b, ref offset, 4);
                case 0xcf:
                    ulong u = ReadBig(b, ref offset, 8);
                    return u <= long.MaxValue ? (object)(long)u : u;
                case 0xd0: return (long)(sbyte)ReadBig(b, ref offset, 1);
                case 0xd1: return (long)(short)ReadBig(b, ref offset, 2);
                case 0xd2: return (long)(int)ReadBig(b, ref offset, 4);
                case 0xd3: return (long)ReadBig(b, ref offset, 8);
                case 0xd9: return ReadStr(b, ref offset, Length(b, ref offset, 1));
                case 0xda: return ReadStr(b, ref offset, Length(b, ref offset, 2));
                case 0xdb: return ReadStr(b, ref offset, Length(b, ref offset, 4));
                case 0xdc: return ReadArray(b, ref offset, Length(b, ref offset, 2), depth);
                case 0xdd: return ReadArray(b, ref offset, Length(b, ref offset, 4), depth);
                case 0xde: return ReadMap(b, ref offset, Length(b, ref offset, 2), depth);
                case 0xdf: return ReadMap(b, ref offset, Length(b, ref offset, 4), depth);
                case 0xc1: throw new MsgpackException("reserved byte 0xc1");
            }
            throw new MsgpackException("ext types are not used by Banterbox");
        }

        static string ReadStr(byte[] b, ref int offset, int n)
        {
            int start = Take(b, ref offset, n);
            try { return Utf8.GetString(b, start, n); }
            catch (ArgumentException) { throw new MsgpackException("a str that is not valid UTF-8"); }
        }

        static byte[] ReadBin(byte[] b, ref int offset, int n)
        {
            int start = Take(b, ref offset, n);
            var bin = new byte[n];
            Array.Copy(b, start, bin, 0, n);
            return bin;
        }

        static List<object> ReadArray(byte[] b, ref int offset, int n, int depth)
        {
            // Each item takes a byte at least: a count past the bytes left is a lie, not a reason to allocate.
            if (n > b.Length - offset) throw new MsgpackException("truncated");
            var list = new List<object>(n);
            for (int i = 0; i < n; i++) list.Add(Read(b, ref offset, depth + 1));
            return list;
        }

        static MsgMap ReadMap(byte[] b, ref int offset, int n, int depth)
        {
            if (n > b.Length - offset) throw new MsgpackException("truncated");
            var map = new MsgMap();
            for (int i = 0; i < n; i++)
            {
                object key = Read(b, ref offset, depth + 1);
                if (!(key is string) && !(key is long) && !(key is ulong))
                    throw new MsgpackException("a map key that is not a string or an integer");
                map.Add(new KeyValuePair<object, object>(key, Read(b, ref offset, depth + 1)));
            }
            return map;
        }
    }
}
