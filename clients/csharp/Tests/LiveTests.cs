// The C# client against a live server: BANTERBOX_URL (tests/clients/test_csharp_client.py starts
// one on the tiny model with the chat, npc and moderation plugins). Prints "N passed, N failed".
using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using Banterbox;

static class LiveTests
{
    static int passed, failed;
    static Uri url;
    const int TimeoutMs = 60000;

    static KeyValuePair<object, object> P(string k, object v) { return BanterboxClient.Pair(k, v); }
    static MsgMap NoEos() { return new MsgMap { P("logit_bias", new MsgMap { P("258", -100.0) }) }; }

    static void Check(string name, Func<Task> test)
    {
        try
        {
            var run = test();
            if (!run.Wait(TimeoutMs)) throw new TimeoutException("no end within " + TimeoutMs + " ms");
            passed++;
        }
        catch (Exception e) { failed++; Console.WriteLine("FAIL " + name + ": " + (e.InnerException ?? e)); }
    }

    static void Assert(bool ok, string what) { if (!ok) throw new Exception(what); }

    static async Task StreamedTurn(bool json)
    {
        using (var bb = await BanterboxClient.ConnectAsync(url, json: json))
        {
            Assert((long)bb.Welcome["protocol"] == 1, "protocol");
            var seqs = new List<long>();
            var turn = bb.Generate(new MsgMap { P("prompt", "Hello"), P("max_tokens", 8L), P("sampling", NoEos()) });
            turn.OnFrame += f => { if (f.Str("type") == "delta") seqs.Add((long)f["seq"]); };
            var done = await turn.Result;
            Assert(done.Str("finish_reason") == "length", "finish " + done.Str("finish_reason"));
            Assert((long)((MsgMap)done["usage"])["completion_tokens"] == 8, "8 tokens");
            Assert(seqs.SequenceEqual(Enumerable.Range(0, seqs.Count).Select(i => (long)i)), "seq");
        }
    }

    static async Task Sessions()
    {
        using (var bb = await BanterboxClient.ConnectAsync(url))
        {
            var opened = await bb.OpenSession("cs-s1");
            Assert(opened.Str("session_id") == "cs-s1" && Equals(opened["resumed"], false), "opened");
            var messages = new List<object> { new MsgMap { P("role", "user"), P("content", "Hi") } };
            await bb.Generate(new MsgMap { P("session_id", "cs-s1"), P("messages", messages), P("max_tokens", 4L) }).Result;
            var resumed = await bb.ResumeSession("cs-s1");
            Assert(Equals(resumed["resumed"], true) && (long)resumed["num_turns"] == 1, "resumed");
            Assert((await bb.CloseSession("cs-s1")).Str("type") == "session.closed", "closed");
            try { await bb.ResumeSession("cs-s1"); throw new Exception("resumed a closed session"); }
            catch (BanterboxException e) { Assert(e.Code == "session_not_found", e.Code); }
        }
    }

    static async Task CancelAndErrors()
    {
        using (var bb = await BanterboxClient.ConnectAsync(url))
        {
            var turn = bb.Generate(new MsgMap { P("prompt", "Once"), P("max_tokens", 2000L), P("sampling", NoEos()) });
            int cancels = 0;
            turn.OnFrame += f => { if (Interlocked.Increment(ref cancels) == 1) bb.Cancel(turn.Id); };
            Assert((await turn.Result).Str("finish_reason") == "cancelled", "cancelled");
            try
            {
                await bb.Generate(new MsgMap { P("prompt", "Hi"), P("sampling", new MsgMap { P("temperature", -1.0) }) }).Result;
                throw new Exception("a bad temperature was accepted");
            }
            catch (BanterboxException e) { Assert(e.Code == "invalid_field" && !e.Retryable, e.Message); }
            var late = new TaskCompletionSource<MsgMap>();
            bb.OnEvent += f => late.TrySetResult(f);
            await bb.Cancel("no-such-request");
            Assert((await late.Task).Str("code") == "unknown_request", "unknown_request");
        }
    }

    static async Task NpcSayOnTheMainThreadQueue()
    {
        using (var bb = await BanterboxClient.ConnectAsync(url, queueEvents: true))
        {
            var types = new List<string>();
            var say = bb.Send("npc.say", new MsgMap { P("npc", "blacksmith"), P("player", "cs"), P("text", "Hello"), P("max_tokens", 24L) });
            int mainThread = Thread.CurrentThread.ManagedThreadId;
            say.OnFrame += f => { Assert(Thread.CurrentThread.ManagedThreadId == mainThread, "off the main thread"); types.Add(f.Str("type")); };
            while (!say.Result.IsCompleted) { bb.Update(); Thread.Sleep(5); } // a game loop's frames
            // done, or npc.replaced when the random test model's line fails output moderation
            string end = say.Result.Result.Str("type");
            Assert(end == "done" || end == "npc.replaced", end);
            Assert(types[0] == "npc.session", types[0]);
            Assert(types.All(t => new[] { "npc.session", "delta", "npc.emotion", "npc.action", "done", "npc.replaced" }.Contains(t)), string.Join(",", types));
            Assert(!say.Text.Contains("["), "markup in speech");
        }
    }

    static async Task ModerationHoldThenApprove()
    {
        using (var bot = await BanterboxClient.ConnectAsync(url))
        using (var desk = await BanterboxClient.ConnectAsync(url, json: true))
        {
            const string channel = "cs-chan";
            var action = new TaskCompletionSource<MsgMap>();
            desk.OnEvent += f => { if (f.Str("type") == "mod.action") action.TrySetResult(f); };
            Assert(Equals((await desk.Call("mod.subscribe", new MsgMap { P("channel", channel) }))["subscribed"], true), "subscribed");
            await bot.Call("mod.config", new MsgMap { P("channel", channel), P("op", "set"), P("policy", new MsgMap { P("hold_s", 60L) }) });
            var user = new MsgMap { P("id", "u1"), P("name", "U1"), P("roles", new List<object>()) };
            var verdict = await bot.Call("mod.check", new MsgMap { P("channel", channel), P("user", user), P("text", "your mom"), P("message_id", "m1") });
            Assert(verdict.Str("action") == "hold", verdict.Str("action"));
            Assert((await action.Task).Str("message_id") == "m1", "event");
            var ok = await desk.Call("mod.review", new MsgMap { P("channel", channel), P("op", "approve"), P("message_id", "m1") });
            Assert(ok.Str("decision") == "approve" && ok.Str("action") == "allow", ok.Str("action"));
        }
    }

    static int Main()
    {
        url = new Uri(Environment.GetEnvironmentVariable("BANTERBOX_URL"));
        Check("msgpack: hello, welcome, a streamed turn", () => StreamedTurn(false));
        Check("json: hello, welcome, a streamed turn", () => StreamedTurn(true));
        Check("sessions", Sessions);
        Check("cancel and errors", CancelAndErrors);
        Check("npc.say on the main-thread queue", NpcSayOnTheMainThreadQueue);
        Check("moderation: hold then approve", ModerationHoldThenApprove);
        Console.WriteLine(passed + " passed, " + failed + " failed");
        return failed == 0 ? 0 : 1;
    }
}
