// Banterbox client over System.Net.WebSockets for Unity and .NET: answers routed by request id;
// with queueEvents, callbacks wait in a queue that Update() runs on the calling (main) thread.
using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.IO;
using System.Net.WebSockets;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace Banterbox
{
    public class BanterboxException : Exception
    {
        public readonly string Code;
        public readonly bool Retryable;
        public readonly MsgMap Frame;

        public BanterboxException(string code, string message, bool retryable = false, MsgMap frame = null)
            : base(code + ": " + message)
        {
            Code = code; Retryable = retryable; Frame = frame;
        }

        public static BanterboxException Of(MsgMap frame)
        {
            return new BanterboxException(frame.Str("code"), frame.Str("message"), Equals(frame["retryable"], true), frame);
        }
    }

    /// <summary>One request's answer: its frames in order, ended by one final frame.</summary>
    public sealed class Request
    {
        public readonly string Id, Type;
        public event Action<MsgMap> OnFrame;
        public string Text = ""; // the deltas' text so far
        readonly HashSet<string> progress;
        readonly TaskCompletionSource<MsgMap> result = new TaskCompletionSource<MsgMap>();
        public Task<MsgMap> Result { get { return result.Task; } }

        internal Request(string id, string type, HashSet<string> progress)
        {
            Id = id; Type = type; this.progress = progress;
        }

        internal bool Receive(MsgMap frame)
        {
            string type = frame.Str("type");
            if (type == "error") { result.TrySetException(BanterboxException.Of(frame)); return true; }
            if (type == "delta") Text += frame.Str("text");
            var listeners = OnFrame;
            if (listeners != null) listeners(frame);
            if (progress.Contains(type)) return false;
            result.TrySetResult(frame);
            return true;
        }

        internal void Fail(Exception error) { result.TrySetException(error); }
    }

    public sealed class BanterboxClient : IDisposable
    {
        public const string ConnectionClosed = "connection_closed"; // a client-side code
        // Frames that belong to a request without ending it; any other frame with its id ends it.
        static readonly Dictionary<string, HashSet<string>> Progress = new Dictionary<string, HashSet<string>>
        {
            { "generate", new HashSet<string> { "delta" } },
            { "npc.say", new HashSet<string> { "delta", "npc.session", "npc.emotion", "npc.action" } },
        };
        // Errors that name a request they do not end (SPEC §5). A cancel's unknown_request names
        // one that already ended; answering a plugin frame, that code ends the frame's request.
        static readonly HashSet<string> NotEnding = new HashSet<string> { "duplicate_request_id" };
        const int ReceiveChunk = 16384;

        readonly ClientWebSocket ws;
        readonly bool json, queueEvents;
        readonly ConcurrentDictionary<string, Request> pending = new ConcurrentDictionary<string, Request>();
        readonly ConcurrentQueue<Action> mainThread = new ConcurrentQueue<Action>();
        readonly SemaphoreSlim sending = new SemaphoreSlim(1, 1);
        int nextId;
        Task receiving;

        public MsgMap Welcome { get; private set; }
        /// <summary>Frames no request waits on: plugin events (mod.action), late errors.</summary>
        public event Action<MsgMap> OnEvent;
        public event Action<string> OnClose;

        BanterboxClient(ClientWebSocket ws, bool json, bool queueEvents)
        {
            this.ws = ws; this.json = json; this.queueEvents = queueEvents;
        }

        /// <summary>Connects, says hello, waits for welcome. json: text frames, else msgpack.
        /// queueEvents: callbacks run only in Update() (Unity: call it from a MonoBehaviour).</summary>
        public static async Task<BanterboxClient> ConnectAsync(
            Uri url, string apiKey = null, bool json = false, bool queueEvents = false,
            string client = "banterbox-csharp/0.1", CancellationToken cancel = default(CancellationToken))
        {
            var ws = new ClientWebSocket();
            if (apiKey != null) ws.Options.SetRequestHeader("Authorization", "Bearer " + apiKey);
            await ws.ConnectAsync(url, cancel).ConfigureAwait(false);
            var bb = new BanterboxClient(ws, json, queueEvents);
            var hello = new MsgMap { Pair("type", "hello"), Pair("protocol", 1L), Pair("client", client) };
            await bb.SendAsync(hello).ConfigureAwait(false);
            MsgMap first = await bb.ReceiveAsync(cancel).ConfigureAwait(false);
            if (first == null) throw new BanterboxException(ConnectionClosed, "closed before welcome");
            if (first.Str("type") == "error") throw BanterboxException.Of(first);
            bb.Welcome = first;
            bb.receiving = Task.Run(bb.ReceiveLoop);
            return bb;
        }

        public static KeyValuePair<object, object> Pair(string key, object value)
        {
            return new KeyValuePair<object, object>(key, value);
        }

        /// <summary>Sends any request frame; its answer frames come to the returned Request.</summary>
        public Request Send(string type, MsgMap payload = null, string id = null)
        {
            id = id ?? "cs-" + Interlocked.Increment(ref nextId);
            HashSet<string> progress;
            if (!Progress.TryGetValue(type, out progress)) progress = new HashSet<string>();
            var request = new Request(id, type, progress);
            if (!pending.TryAdd(id, request)) throw new InvalidOperationException("request id " + id + " is in flight");
            var frame = new MsgMap { Pair("type", type), Pair("id", id) };
            if (payload != null) foreach (var pair in payload) if (!Equals(pair.Key, "type") && !Equals(pair.Key, "id")) frame.Add(pair);
            SendAsync(frame).ContinueWith(t =>
            {
                Request gone;
                if (t.IsFaulted && pending.TryRemove(id, out gone)) gone.Fail(t.Exception.InnerException);
            });
            return request;
        }

        public Request Generate(MsgMap fields) { return Send("generate", fields); }
        public Task<MsgMap> Call(string type, MsgMap payload = null) { return Send(type, payload).Result; }

        public Task<MsgMap> OpenSession(string sessionId = null)
        {
            var payload = new MsgMap();
            if (sessionId != null) payload.Add(Pair("session_id", sessionId));
            return Call("session.open", payload);
        }

        public Task<MsgMap> ResumeSession(string sessionId) { return Call("session.resume", new MsgMap { Pair("session_id", sessionId) }); }
        public Task<MsgMap> CloseSession(string sessionId) { return Call("session.close", new MsgMap { Pair("session_id", sessionId) }); }

        /// <summary>Cancels a running generate; it still ends with its done ("cancelled").</summary>
        public Task Cancel(string id) { return SendAsync(new MsgMap { Pair("type", "cancel"), Pair("id", id) }); }

        /// <summary>Runs the queued callbacks on this thread; returns how many ran.</summary>
        public int Update()
        {
            int n = 0;
            Action work;
            while (mainThread.TryDequeue(out work)) { work(); n++; }
            return n;
        }

        public async Task SendAsync(MsgMap frame)
        {
            byte[] data = json ? Encoding.UTF8.GetBytes(Json.Write(frame)) : Msgpack.Encode(frame);
            var kind = json ? WebSocketMessageType.Text : WebSocketMessageType.Binary;
            await sending.WaitAsync().ConfigureAwait(false); // one send at a time on a ClientWebSocket
            try { await ws.SendAsync(new ArraySegment<byte>(data), kind, true, CancellationToken.None).ConfigureAwait(false); }
            finally { sending.Release(); }
        }

        async Task<MsgMap> ReceiveAsync(CancellationToken cancel)
        {
            var buffer = new byte[ReceiveChunk];
            var message = new MemoryStream();
            for (;;)
            {
                var got = await ws.ReceiveAsync(new ArraySegment<byte>(buffer), cancel).ConfigureAwait(false);
                if (got.MessageType == WebSocketMessageType.Close) return null;
                message.Write(buffer, 0, got.Count);
                if (!got.EndOfMessage) continue;
                byte[] data = message.ToArray();
                return got.MessageType == WebSocketMessageType.Text ? Frames.Decode(Encoding.UTF8.GetString(data)) : Frames.Decode(data);
            }
        }

        async Task ReceiveLoop()
        {
            string why = "closed";
            try
            {
                for (;;)
                {
                    MsgMap frame = await ReceiveAsync(CancellationToken.None).ConfigureAwait(false);
                    if (frame == null) break;
                    Dispatch(() => Route(frame));
                }
            }
            catch (Exception e) { why = e.Message; }
            var error = new BanterboxException(ConnectionClosed, why, true);
            foreach (var id in pending.Keys)
            {
                Request gone;
                if (pending.TryRemove(id, out gone)) Dispatch(() => gone.Fail(error));
            }
            Dispatch(() => { var closed = OnClose; if (closed != null) closed(why); });
        }

        void Dispatch(Action work)
        {
            if (queueEvents) mainThread.Enqueue(work);
            else work();
        }

        void Route(MsgMap frame)
        {
            string id = frame["id"] as string;
            Request request = null;
            bool ends = !(frame.Str("type") == "error" && NotEnding.Contains(frame.Str("code") ?? ""));
            if (id == null || !ends || !pending.TryGetValue(id, out request))
            {
                var events = OnEvent;
                if (events != null) events(frame);
                return;
            }
            Request done;
            if (request.Receive(frame)) pending.TryRemove(id, out done);
        }

        public void Dispose()
        {
            if (ws.State == WebSocketState.Open)
            {
                try { ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None).Wait(2000); }
                catch (AggregateException) { }
            }
            if (receiving != null) receiving.Wait(2000); // pending requests hear the close first
            ws.Dispose();
        }
    }
}
