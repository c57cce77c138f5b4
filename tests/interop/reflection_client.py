"""Interop: a non-Rust gRPC client that knows the center only through server
reflection (no .proto files), as grpcurl does.

Usage: python3 reflection_client.py GRPC_HOST:PORT WS_URL
Lists services, checks health, calls ListRooms, and reads the event feed
while a WebSocket peer (python `websockets`) joins a room.
"""
import json
import queue
import sys
import threading

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from websockets.sync.client import connect

passed = 0


def check(cond, what):
    global passed
    if not cond:
        raise AssertionError(what)
    passed += 1


def main():
    target, ws_url = sys.argv[1], sys.argv[2]
    channel = grpc.insecure_channel(target)
    db = ProtoReflectionDescriptorDatabase(channel)
    services = db.get_services()
    print("services:", services)
    check("pilot.v1.RoomService" in services, "RoomService listed")
    check("grpc.health.v1.Health" in services, "health listed")

    # Reflection v1 answers too (same messages as v1alpha on the wire).
    from grpc_reflection.v1alpha import reflection_pb2
    v1 = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    answer = next(iter(v1(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)))
    v1_services = [s.name for s in answer.list_services_response.service]
    print("v1 services:", v1_services)
    check("pilot.v1.RoomService" in v1_services, "reflection v1 lists RoomService")

    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="pilot.v1.RoomService"), timeout=5)
    check(status.status == health_pb2.HealthCheckResponse.SERVING, "SERVING")

    pool = descriptor_pool.DescriptorPool(db)
    service = pool.FindServiceByName("pilot.v1.RoomService")

    def method(name):
        m = service.methods_by_name[name]
        req = message_factory.GetMessageClass(m.input_type)
        resp = message_factory.GetMessageClass(m.output_type)
        return f"/pilot.v1.RoomService/{name}", req, resp

    path, req, resp = method("WatchEvents")
    watch = channel.unary_stream(path, request_serializer=req.SerializeToString, response_deserializer=resp.FromString)
    events = queue.Queue()
    stream = watch(req(room_ids=["py-room"]), timeout=20)

    def pump():
        try:
            for e in stream:
                events.put(json_format.MessageToDict(e))
        except grpc.RpcError:
            pass

    threading.Thread(target=pump, daemon=True).start()

    with connect(ws_url, subprotocols=["protoo"]) as ws:
        check(ws.subprotocol == "protoo", "protoo selected")
        ws.send(json.dumps({"request": True, "id": 1, "method": "join",
                            "data": {"roomId": "py-room", "userId": "py-user", "userName": "Py"}}))
        reply = json.loads(ws.recv(timeout=5))
        check(reply["ok"] is True and reply["id"] == 1, "join ok")

        path, req, resp = method("ListRooms")
        list_rooms = channel.unary_unary(path, request_serializer=req.SerializeToString, response_deserializer=resp.FromString)
        rooms = json_format.MessageToDict(list_rooms(req(), timeout=5))
        print("ListRooms:", json.dumps(rooms))
        check(rooms["rooms"][0]["roomId"] == "py-room" and rooms["rooms"][0]["userCount"] == 1, "room listed")

        seen = []
        while "EVENT_KIND_USER_JOINED" not in [e.get("kind") for e in seen]:
            seen.append(events.get(timeout=5))
        print("events:", json.dumps(seen))
        check(seen[0]["kind"] == "EVENT_KIND_ROOM_CREATED", "room created first")
        check(seen[-1]["userJoined"]["userId"] == "py-user", "user joined event")
        check(int(seen[-1]["seq"]) == int(seen[0]["seq"]) + 1, "sequence numbers")
    stream.cancel()
    print(f"grpc reflection interop: {passed} passed, 0 failed")


if __name__ == "__main__":
    main()
