# Banterbox client for Godot 4 over WebSocketPeer, JSON text frames; polls in _process, so every
# signal fires on the main thread. Touches no scene but its own node.
class_name BanterboxClient
extends Node

## Fired once the server's welcome came (the frame as a Dictionary).
signal connected(welcome: Dictionary)
## Frames no request waits on: plugin events such as mod.action, late errors.
signal event_received(frame: Dictionary)
## The socket closed; pending requests ended with a connection_closed error first.
signal disconnected(code: int, reason: String)

## One request's answer: its frames in order, then `ended` with the final frame
## (done, npc.interrupted, mod.verdict, ... or an error frame: check `frame.type`).
class Request extends RefCounted:
	signal frame_received(frame: Dictionary)
	signal ended(frame: Dictionary)
	var id: String
	var type: String
	var text := ""  # the deltas' text so far
	var _progress: Array

	func _init(request_id: String, request_type: String, progress: Array) -> void:
		id = request_id
		type = request_type
		_progress = progress

	func _receive(frame: Dictionary) -> bool:
		if frame.type == "delta":
			text += frame.get("text", "")
		if frame.type != "error":
			frame_received.emit(frame)
		if frame.type in _progress:
			return false
		ended.emit(frame)
		return true

# Frames that belong to a request without ending it; any other frame with its id ends it.
const PROGRESS := {
	"generate": ["delta"],
	"npc.say": ["delta", "npc.session", "npc.emotion", "npc.action"],
}

@export var url := "ws://127.0.0.1:8765"
@export var api_key := ""  # sent in hello.api_key when auth is on
@export var client_name := "banterbox-godot/0.1"

var welcome := {}
var _ws := WebSocketPeer.new()
var _pending := {}  # request id -> Request
var _next_id := 0
var _said_hello := false
var _open := false


func _ready() -> void:
	set_process(false)  # polling starts with connect_to_server()


func connect_to_server() -> Error:
	_said_hello = false
	_open = false
	set_process(true)
	return _ws.connect_to_url(url)


## Sends any request frame (fields as in protocol/SPEC.md); its answer comes to the Request.
func request(type: String, payload: Dictionary = {}) -> Request:
	_next_id += 1
	var id: String = payload.get("id", "gd-%d" % _next_id)
	var req := Request.new(id, type, PROGRESS.get(type, []))
	_pending[id] = req
	var frame := payload.duplicate(true)
	frame["type"] = type
	frame["id"] = id
	_send(frame)
	return req


func generate(fields: Dictionary) -> Request:
	return request("generate", fields)


## Cancels a running generate: it still ends, with done and finish_reason "cancelled".
func cancel(request_id: String) -> void:
	_send({"type": "cancel", "id": request_id})


func close(code: int = 1000) -> void:
	_ws.close(code)


func _send(frame: Dictionary) -> void:
	_ws.send_text(JSON.stringify(frame))


func _process(_delta: float) -> void:
	_ws.poll()
	var state := _ws.get_ready_state()
	if state == WebSocketPeer.STATE_OPEN:
		if not _said_hello:
			_said_hello = true
			var hello := {"type": "hello", "protocol": 1, "client": client_name}
			if api_key != "":
				hello["api_key"] = api_key
			_send(hello)
		while _ws.get_available_packet_count() > 0:
			var data := _ws.get_packet()
			if not _ws.was_string_packet():
				continue  # this client speaks JSON; the server answers in the encoding it got
			var frame = JSON.parse_string(data.get_string_from_utf8())
			if typeof(frame) == TYPE_DICTIONARY and frame.has("type"):
				_route(frame)
	elif state == WebSocketPeer.STATE_CLOSED:
		set_process(false)
		var closed := {"type": "error", "code": "connection_closed", "message": "closed", "retryable": true}
		for id in _pending.keys():
			var req: Request = _pending[id]
			req.ended.emit(closed.merged({"id": id}))
		_pending.clear()
		disconnected.emit(_ws.get_close_code(), _ws.get_close_reason())


func _route(frame: Dictionary) -> void:
	if not _open:
		_open = frame.type == "welcome"
		if _open:
			welcome = frame
			connected.emit(frame)
		else:
			event_received.emit(frame)  # e.g. unauthorized: the server closes next
		return
	var id = frame.get("id")
	# duplicate_request_id names a request it does not end (SPEC §5).
	var ends := not (frame.type == "error" and frame.get("code") == "duplicate_request_id")
	if typeof(id) != TYPE_STRING or not _pending.has(id) or not ends:
		event_received.emit(frame)
		return
	if _pending[id]._receive(frame):
		_pending.erase(id)
