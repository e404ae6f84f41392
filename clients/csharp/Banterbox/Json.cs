// JSON text frames in the same value model as Msgpack.cs. Pure: no sockets, no Unity.
using System;
using System.Collections.Generic;
using System.Globalization;
using System.Text;

namespace Banterbox
{
    public static class Json
    {
        public const int MaxDepth = 512;

        public static object Parse(string text)
        {
            int i = 0;
            object value = Value(text, ref i, 0);
            Space(text, ref i);
            if (i != text.Length) throw new FormatException("text after the value");
            return value;
        }

        public static string Write(object value)
        {
            var sb = new StringBuilder();
            Write(sb, value);
            return sb.ToString();
        }

        static void Space(string t, ref int i)
        {
            while (i < t.Length && (t[i] == ' ' || t[i] == '\t' || t[i] == '\n' || t[i] == '\r')) i++;
        }

        static char Next(string t, ref int i)
        {
            Space(t, ref i);
            if (i >= t.Length) throw new FormatException("truncated");
            return t[i];
        }

        static void Expect(string t, ref int i, string word)
        {
            if (string.CompareOrdinal(t, i, word, 0, word.Length) != 0) throw new FormatException("bad literal");
            i += word.Length;
        }

        static object Value(string t, ref int i, int depth)
        {
            if (depth > MaxDepth) throw new FormatException("nested too deep");
            char c = Next(t, ref i);
            switch (c)
            {
                case '{':
                    var map = new MsgMap();
                    i++;
                    if (Next(t, ref i) == '}') { i++; return map; }
                    for (;;)
                    {
                        if (Next(t, ref i) != '"') throw new FormatException("a key that is not a string");
                        string key = Str(t, ref i);
                        if (Next(t, ref i) != ':') throw new FormatException("':' expected");
                        i++;
                        map.Add(new KeyValuePair<object, object>(key, Value(t, ref i, depth + 1)));
                        char end = Next(t, ref i);
                        i++;
                        if (end == '}') return map;
                        if (end != ',') throw new FormatException("',' or '}' expected");
                    }
                case '[':
                    var list = new List<object>();
                    i++;
                    if (Next(t, ref i) == ']') { i++; return list; }
                    for (;;)
                    {
                        list.Add(Value(t, ref i, depth + 1));
                        char end = Next(t, ref i);
                        i++;
                        if (end == ']') return list;
                        if (end != ',') throw new FormatException("',' or ']' expected");
                    }
                case '"': return Str(t, ref i);
                case 't': Expect(t, ref i, "true"); return true;
                case 'f': Expect(t, ref i, "false"); return false;
                case 'n': Expect(t, ref i, "null"); return null;
            }
            return Number(t, ref i);
        }

        static object Number(string t, ref int i)
        {
            int start = i;
            bool isFloat = false;
            while (i < t.Length && "+-0123456789.eE".IndexOf(t[i]) >= 0)
            {
                if (t[i] == '.' || t[i] == 'e' || t[i] == 'E') isFloat = true;
                i++;
            }
            string s = t.Substring(start, i - start);
            if (s.Length == 0) throw new FormatException("unexpected character");
            long l;
            if (!isFloat && long.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out l)) return l;
            ulong u;
            if (!isFloat && ulong.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out u)) return u;
            double d;
            if (double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out d) && !double.IsInfinity(d)) return d;
            throw new FormatException("bad number " + s);
        }

        static string Str(string t, ref int i)
        {
            var sb = new StringBuilder();
            i++; // the opening quote
            for (;;)
            {
                if (i >= t.Length) throw new FormatException("truncated string");
                char c = t[i++];
                if (c == '"') return sb.ToString();
                if (c < 0x20) throw new FormatException("a control character in a string");
                if (c != '\\') { sb.Append(c); continue; }
                if (i >= t.Length) throw new FormatException("truncated string");
                char e = t[i++];
                switch (e)
                {
                    case '"': case '\\': case '/': sb.Append(e); break;
                    case 'b': sb.Append('\b'); break;
                    case 'f': sb.Append('\f'); break;
                    case 'n': sb.Append('\n'); break;
                    case 'r': sb.Append('\r'); break;
                    case 't': sb.Append('\t'); break;
                    case 'u':
                        if (i + 4 > t.Length) throw new FormatException("truncated escape");
                        sb.Append((char)int.Parse(t.Substring(i, 4), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                        i += 4;
                        break;
                    default: throw new FormatException("bad escape");
                }
            }
        }

        static void Write(StringBuilder sb, object value)
        {
            if (value == null) { sb.Append("null"); return; }
            if (value is bool) { sb.Append((bool)value ? "true" : "false"); return; }
            if (value is int || value is long || value is ulong)
            {
                sb.Append(Convert.ToString(value, CultureInfo.InvariantCulture));
                return;
            }
            if (value is float || value is double)
            {
                double d = Convert.ToDouble(value, CultureInfo.InvariantCulture);
                if (double.IsNaN(d) || double.IsInfinity(d)) throw new FormatException(d + " is not allowed in a frame");
                string r = d.ToString("R", CultureInfo.InvariantCulture);
                sb.Append(r.IndexOfAny(new[] { '.', 'E', 'e' }) < 0 ? r + ".0" : r);
                return;
            }
            var s = value as string;
            if (s != null) { WriteStr(sb, s); return; }
            var map = value as MsgMap;
            if (map != null)
            {
                sb.Append('{');
                for (int k = 0; k < map.Count; k++)
                {
                    if (k > 0) sb.Append(',');
                    WriteStr(sb, Convert.ToString(map[k].Key, CultureInfo.InvariantCulture));
                    sb.Append(':');
                    Write(sb, map[k].Value);
                }
                sb.Append('}');
                return;
            }
            var list = value as System.Collections.IList;
            if (list != null)
            {
                sb.Append('[');
                for (int k = 0; k < list.Count; k++)
                {
                    if (k > 0) sb.Append(',');
                    Write(sb, list[k]);
                }
                sb.Append(']');
                return;
            }
            throw new FormatException("cannot write a " + value.GetType().Name + " as JSON");
        }

        static void WriteStr(StringBuilder sb, string s)
        {
            sb.Append('"');
            foreach (char c in s)
            {
                if (c == '"' || c == '\\') sb.Append('\\').Append(c);
                else if (c < 0x20) sb.Append("\\u").Append(((int)c).ToString("x4"));
                else sb.Append(c);
            }
            sb.Append('"');
        }
    }
}
