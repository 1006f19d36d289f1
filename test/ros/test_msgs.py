"""The package's own messages and tf2_msgs/TFMessage as built by scripts/build_msgs.py.

Checks the generated fields, a CDR round trip through the C typesupport, one publish/subscribe
per type between two rclpy nodes (rmw_fastrtps_cpp), and that TFMessage is the real
tf2_msgs/msg/TFMessage: same type description and RIHS01 type hash, so it interoperates with
tf2_ros on a real ROS 2 install.
"""

from __future__ import annotations

import time
import uuid

import pytest

try:
    from occ_audit_ros.msg import HiddenObjectQuery, HiddenObjectResult, SemanticVoxelGrid
    from tf2_msgs.msg import TFMessage
except ImportError as error:  # the bindings are build outputs, not sources
    raise ImportError(
        f"{error}: the message bindings are not built; run `.venv/bin/python "
        "scripts/build_msgs.py` (scripts/setup_env.sh does) and try again"
    ) from error

import rclpy
from geometry_msgs.msg import Point, TransformStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from std_msgs.msg import Header

# Type hash of the real tf2_msgs/msg/TFMessage (ros2/geometry2, Jazzy and Kilted): what the
# rosidl generators compute from `geometry_msgs/TransformStamped[] transforms`, and what the
# rosbags typestores for ROS2_JAZZY and ROS2_KILTED give (checked below when rosbags is there).
REAL_TFMESSAGE_HASH = "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087"

TIMEOUT_S = 15.0


# ---------------------------------------------------------------------------------------------
# Example messages with every field set to a non-default value


def make_voxel_grid() -> SemanticVoxelGrid:
    return SemanticVoxelGrid(
        header=Header(frame_id="base_link"),
        voxel_size=0.25,
        origin=Point(x=-10.0, y=-5.5, z=-1.0),
        dimensions=[80, 44, 16],
        labels=["car", "pedestrian", "traffic cone"],
        indices=[0, 17, 56319],
        label_ids=[2, 0, 1],
        scores=[0.5, 0.75, 1.5],
        model="openai/clip-vit-base-patch32",
        random_weights=True,
    )


def make_query() -> HiddenObjectQuery:
    return HiddenObjectQuery(
        header=Header(frame_id="base_link"),
        id=2**40 + 3,
        target="backpack",
        relation="behind",
        reference="car",
    )


def make_result() -> HiddenObjectResult:
    return HiddenObjectResult(
        header=Header(frame_id="base_link"),
        query=make_query(),
        voxel_size=0.5,
        origin=Point(x=1.0, y=2.0, z=3.0),
        dimensions=[4, 5, 6],
        indices=[3, 7, 119],
        probabilities=[0.125, 0.5, 1.0],
        model="random-tiny",
        random_weights=False,
        error="",
    )


def make_tf() -> TFMessage:
    transforms = []
    for i, (parent, child) in enumerate([("map", "odom"), ("odom", "base_link")]):
        t = TransformStamped()
        t.header.frame_id = parent
        t.header.stamp.sec = 1532402927 + i
        t.header.stamp.nanosec = 647951000
        t.child_frame_id = child
        t.transform.translation.x = 1.5 + i
        t.transform.translation.y = -2.25
        t.transform.translation.z = 0.125
        t.transform.rotation.z = 0.7071067811865476
        t.transform.rotation.w = 0.7071067811865476
        transforms.append(t)
    return TFMessage(transforms=transforms)


# ---------------------------------------------------------------------------------------------
# Generated fields


def test_semantic_voxel_grid_fields():
    assert SemanticVoxelGrid.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "voxel_size": "float",
        "origin": "geometry_msgs/Point",
        "dimensions": "uint32[3]",
        "labels": "sequence<string>",
        "indices": "sequence<uint32>",
        "label_ids": "sequence<uint16>",
        "scores": "sequence<float>",
        "model": "string",
        "random_weights": "boolean",
    }


def test_hidden_object_query_fields():
    assert HiddenObjectQuery.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "id": "uint64",
        "target": "string",
        "relation": "string",
        "reference": "string",
    }
    assert HiddenObjectQuery.RELATIONS.split(",") == [
        "in", "on", "behind", "in front of", "on the left of", "on the right of"
    ]


def test_hidden_object_result_fields():
    assert HiddenObjectResult.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "query": "occ_audit_ros/HiddenObjectQuery",
        "error": "string",
        "voxel_size": "float",
        "origin": "geometry_msgs/Point",
        "dimensions": "uint32[3]",
        "indices": "sequence<uint32>",
        "probabilities": "sequence<float>",
        "model": "string",
        "random_weights": "boolean",
    }


def test_hidden_object_service_fields():
    from occ_audit_ros.srv import HiddenObject

    assert HiddenObject.Request.get_fields_and_field_types() == {"query": "occ_audit_ros/HiddenObjectQuery"}
    assert HiddenObject.Response.get_fields_and_field_types() == {
        "success": "boolean", "message": "string", "result": "occ_audit_ros/HiddenObjectResult"}


def test_tf_message_fields():
    assert TFMessage.get_fields_and_field_types() == {
        "transforms": "sequence<geometry_msgs/TransformStamped>"
    }


# ---------------------------------------------------------------------------------------------
# CDR round trip (rclpy.serialization goes through the C typesupport of each package)


@pytest.mark.parametrize(
    "factory", [make_voxel_grid, make_query, make_result, make_tf],
    ids=["SemanticVoxelGrid", "HiddenObjectQuery", "HiddenObjectResult", "TFMessage"],
)
def test_serialization_round_trip(factory):
    message = factory()
    data = serialize_message(message)
    assert isinstance(data, bytes) and len(data) > 4
    again = deserialize_message(data, type(message))
    assert again == message
    assert again is not message
    # A default-constructed message differs, so == really compares the contents.
    assert type(message)() != message


# ---------------------------------------------------------------------------------------------
# Publish / subscribe through rmw_fastrtps_cpp


@pytest.fixture
def ros_context():
    """A context of its own, so the test neither needs nor disturbs rclpy's default context.

    test/conftest.py keeps DDS discovery on localhost and gives each test process its own
    ROS_DOMAIN_ID; topic names are unique as well.
    """
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    nodes = []

    def make_node(name: str):
        node = rclpy.create_node(f"{name}_{uuid.uuid4().hex[:8]}", context=context)
        nodes.append(node)
        executor.add_node(node)
        return node

    yield make_node, executor
    executor.shutdown()
    for node in nodes:
        node.destroy_node()
    context.try_shutdown()


def spin_until(executor, condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {TIMEOUT_S} s waiting for {what}")
        executor.spin_once(timeout_sec=0.05)


def publish_and_receive(ros_context, message):
    """Publish `message` from one node, receive it on another; return (received, topic, pub)."""
    make_node, executor = ros_context
    msg_type = type(message)
    topic = f"/occ_audit_test/{msg_type.__name__.lower()}_{uuid.uuid4().hex}"
    qos = QoSProfile(
        depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE
    )
    pub_node = make_node("test_msgs_pub")
    sub_node = make_node("test_msgs_sub")
    received = []
    sub_node.create_subscription(msg_type, topic, received.append, qos)
    publisher = pub_node.create_publisher(msg_type, topic, qos)

    spin_until(executor, lambda: publisher.get_subscription_count() >= 1,
               f"the subscriber of {topic} to be discovered")
    publisher.publish(message)
    spin_until(executor, lambda: received, f"a {msg_type.__name__} on {topic}")
    return received[0], topic, pub_node


def test_publish_subscribe_semantic_voxel_grid(ros_context):
    sent = make_voxel_grid()
    got, topic, node = publish_and_receive(ros_context, sent)
    assert got == sent
    assert list(got.dimensions) == [80, 44, 16]
    assert list(got.labels) == ["car", "pedestrian", "traffic cone"]
    assert list(got.scores) == [0.5, 0.75, 1.5]
    (info,) = node.get_publishers_info_by_topic(topic)
    assert info.topic_type == "occ_audit_ros/msg/SemanticVoxelGrid"
    assert str(info.topic_type_hash).startswith("RIHS01_")


def test_publish_subscribe_tf_message(ros_context):
    sent = make_tf()
    got, topic, node = publish_and_receive(ros_context, sent)
    assert got == sent
    assert [t.child_frame_id for t in got.transforms] == ["odom", "base_link"]
    # The hash the middleware announces for the topic is the real tf2_msgs one.
    (info,) = node.get_publishers_info_by_topic(topic)
    assert info.topic_type == "tf2_msgs/msg/TFMessage"
    assert str(info.topic_type_hash) == REAL_TFMESSAGE_HASH


# ---------------------------------------------------------------------------------------------
# TFMessage is the real tf2_msgs/msg/TFMessage


def test_tf_message_type_description(ros_context):
    """Ask a node's ~/get_type_description service (rcl serves it from the typesupport)."""
    from type_description_interfaces.msg import FieldType
    from type_description_interfaces.srv import GetTypeDescription

    make_node, executor = ros_context
    node = make_node("test_msgs_describe")
    node.create_publisher(TFMessage, f"/occ_audit_test/tf_{uuid.uuid4().hex}", 1)
    client = node.create_client(GetTypeDescription, f"{node.get_fully_qualified_name()}"
                                "/get_type_description")
    spin_until(executor, client.service_is_ready, "the ~/get_type_description service")
    future = client.call_async(
        GetTypeDescription.Request(
            type_name="tf2_msgs/msg/TFMessage", type_hash=REAL_TFMESSAGE_HASH,
            include_type_sources=False,
        )
    )
    spin_until(executor, future.done, "the type description")
    response = future.result()
    assert response.successful, response.failure_reason

    description = response.type_description.type_description
    assert description.type_name == "tf2_msgs/msg/TFMessage"
    assert len(description.fields) == 1
    (field,) = description.fields
    assert field.name == "transforms"
    assert field.type.type_id == FieldType.FIELD_TYPE_NESTED_TYPE_UNBOUNDED_SEQUENCE
    assert field.type.nested_type_name == "geometry_msgs/msg/TransformStamped"
    referenced = {t.type_name for t in response.type_description.referenced_type_descriptions}
    assert referenced == {
        "builtin_interfaces/msg/Time",
        "geometry_msgs/msg/Quaternion",
        "geometry_msgs/msg/Transform",
        "geometry_msgs/msg/TransformStamped",
        "geometry_msgs/msg/Vector3",
        "std_msgs/msg/Header",
    }


def test_real_tf_message_hash_from_rosbags():
    """rosbags computes RIHS01 hashes itself from its copies of the real ROS 2 definitions."""
    typesys = pytest.importorskip("rosbags.typesys")
    for store in ("ROS2_JAZZY", "ROS2_KILTED"):
        typestore = typesys.get_typestore(getattr(typesys.Stores, store))
        assert typestore.hash_rihs01("tf2_msgs/msg/TFMessage") == REAL_TFMESSAGE_HASH, store
