// The C# codec against every golden frame in protocol/vectors (and the invalid ones). No server.
// Usage: mono VectorTests.exe PATH/TO/protocol/vectors; prints "N passed, N failed".
using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using Banterbox;

static class VectorTests
{
    static int passed, failed;

    static void Check(string name, Action test)
    {
        try { test(); passed++; }
        catch (Exception e) { failed++; Console.WriteLine("FAIL " + name + ": " + e.Message); }
    }

    static void Assert(bool ok, string what) { if (!ok) throw new Exception(what); }

    // msgpack's integer keys are decimal strings in JSON; a long equals a double of its value.
    static bool Same(object a, object b)
    {
        if (a is MsgMap ma && b is MsgMap mb)
        {
            if (ma.Count != mb.Count) return false;
            // Parsed maps compare unordered (the .json files sort logit_bias keys as text).
            foreach (var pair in ma)
                if (!mb.Any(other => Convert.ToString(other.Key) == Convert.ToString(pair.Key) && Same(pair.Value, other.Value))) return false;
            return true;
        }
        if (a is List<object> la && b is List<object> lb)
            return la.Count == lb.Count && la.Zip(lb, Same).All(x => x);
        if ((a is long || a is double || a is ulong) && (b is long || b is double || b is ulong))
            return Convert.ToDouble(a) == Convert.ToDouble(b);
        return Equals(a, b);
    }

    static int Main(string[] args)
    {
        string dir = args[0];
        var names = Directory.GetFiles(dir, "*.msgpack").Select(Path.GetFileNameWithoutExtension).OrderBy(n => n).ToList();
        Check("there are vectors", () => Assert(names.Count >= 20, names.Count + " vectors"));
        foreach (var name in names)
        {
            byte[] bytes = File.ReadAllBytes(Path.Combine(dir, name + ".msgpack"));
            string text = File.ReadAllText(Path.Combine(dir, name + ".json"));
            Check(name + " decodes to its .json", () => Assert(Same(Msgpack.Decode(bytes), Json.Parse(text)), "differs"));
            Check(name + " encodes back to the same bytes", () => Assert(Msgpack.Encode(Msgpack.Decode(bytes)).SequenceEqual(bytes), "bytes differ"));
            Check(name + " survives JSON", () => Assert(Same(Json.Parse(Json.Write(Json.Parse(text))), Json.Parse(text)), "differs"));
            Check(name + " is a frame with a type", () => Assert(Frames.Decode(bytes).Str("type") != null, "no type"));
        }
        string invalid = Path.Combine(dir, "invalid");
        var expected = (MsgMap)Json.Parse(File.ReadAllText(Path.Combine(invalid, "expected.json")));
        foreach (var pair in expected)
        {
            string file = (string)pair.Key, code = (string)pair.Value;
            byte[] raw = File.ReadAllBytes(Path.Combine(invalid, file));
            Check("invalid/" + file, () =>
            {
                try
                {
                    if (file.EndsWith(".json")) Frames.Decode(System.Text.Encoding.UTF8.GetString(raw));
                    else Frames.Decode(raw);
                    Assert(code != "malformed_frame", "a malformed frame was accepted");
                }
                catch (FormatException) { }
            });
        }
        Check("shortest integers, float64 floats, 64-bit ends", () =>
        {
            Assert(Msgpack.Encode(5L).SequenceEqual(new byte[] { 5 }), "5");
            Assert(Msgpack.Encode(-1L).SequenceEqual(new byte[] { 0xff }), "-1");
            Assert(Msgpack.Encode(200L).SequenceEqual(new byte[] { 0xcc, 200 }), "200");
            Assert(Msgpack.Encode(1.0)[0] == 0xcb, "1.0");
            Assert((long)Msgpack.Decode(Msgpack.Encode(long.MinValue)) == long.MinValue, "min");
            Assert((ulong)Msgpack.Decode(Msgpack.Encode(ulong.MaxValue)) == ulong.MaxValue, "max");
        });
        Check("hostile input is refused", () =>
        {
            foreach (var bad in new[] { new byte[] { 0xc1 }, new byte[] { 0xa3, 0x61 }, new byte[] { 1, 2 },
                                        new byte[] { 0xa1, 0xff }, new byte[] { 0xd4, 1, 0 }, new byte[] { 0xdd, 0xff, 0xff, 0xff, 0xff } })
            {
                try { Msgpack.Decode(bad); throw new Exception("accepted " + BitConverter.ToString(bad)); }
                catch (MsgpackException) { }
            }
            try { Msgpack.Decode(Enumerable.Repeat((byte)0x91, 100000).ToArray()); throw new Exception("deep accepted"); }
            catch (MsgpackException) { }
        });
        Console.WriteLine(passed + " passed, " + failed + " failed");
        return failed == 0 ? 0 : 1;
    }
}
