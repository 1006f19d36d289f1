"""Frame names and topic names shared by the bag converter, the player and the nodes.

Frames follow REP-103 / REP-105:

* ``map``: the nuScenes global frame (ENU-like, z up), fixed to the world.
* ``base_link``: the nuScenes ego frame (x forward, y left, z up, origin at the rear axle centre
  projected to the ground, as nuScenes defines ``ego_pose``).
* ``lidar_top``: the LIDAR_TOP sensor frame (x forward... as calibrated by nuScenes, z up).
* ``cam_front_optical`` etc.: camera optical frames (x right, y down, z forward), which is exactly
  the nuScenes camera sensor frame, hence the REP-103 ``_optical`` suffix.
"""

from __future__ import annotations

MAP_FRAME = "map"
BASE_FRAME = "base_link"

CAMERA_CHANNELS = (
    "CAM_FRONT_LEFT",
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
)
LIDAR_CHANNEL = "LIDAR_TOP"


def sensor_frame(channel: str) -> str:
    """TF frame id of a nuScenes sensor channel.

    Args:
        channel: nuScenes channel name, e.g. ``"CAM_FRONT"`` or ``"LIDAR_TOP"``.

    Returns:
        ``"cam_front_optical"`` for cameras (optical frame, z forward), ``"lidar_top"`` for LiDAR.
    """
    name = channel.lower()
    return name + "_optical" if channel.startswith("CAM_") else name


def camera_namespace(channel: str) -> str:
    """Topic namespace of a camera, e.g. ``"/cam_front"`` for ``"CAM_FRONT"``."""
    return "/" + channel.lower()


def relative_camera_namespace(channel: str) -> str:
    """Camera namespace relative to a node's namespace, e.g. ``"cam_front"`` (image_transport layout:
    ``<ns>/image_raw``, ``<ns>/image_raw/compressed``, ``<ns>/camera_info``)."""
    return channel.lower()


def image_topic(channel: str) -> str:
    """``sensor_msgs/Image`` topic (rgb8) of a camera channel."""
    return camera_namespace(channel) + "/image_raw"


def compressed_image_topic(channel: str) -> str:
    """``sensor_msgs/CompressedImage`` topic (JPEG or PNG, image_transport's ``compressed``)."""
    return image_topic(channel) + "/compressed"


def camera_info_topic(channel: str) -> str:
    """``sensor_msgs/CameraInfo`` topic of a camera channel (intrinsics of image_raw and depth)."""
    return camera_namespace(channel) + "/camera_info"


def depth_topic(channel: str) -> str:
    """``sensor_msgs/Image`` (32FC1, metres along the optical axis, NaN = no return) of a camera."""
    return camera_namespace(channel) + "/depth"


LIDAR_TOPIC = "/lidar_top/points"
GT_BOXES_TOPIC = "/gt/boxes"
TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
CLOCK_TOPIC = "/clock"

# Outputs of the perception node (relative names: they follow the node's namespace).
SEMANTIC_VOXELS_TOPIC = "semantic_voxels"
VOXEL_MARKERS_TOPIC = "semantic_voxel_markers"
SEMANTIC_POINTS_TOPIC = "semantic_points"
HIDDEN_QUERY_TOPIC = "hidden_object_query"
HIDDEN_RESULT_TOPIC = "hidden_object_result"
HIDDEN_MARKERS_TOPIC = "hidden_object_markers"
HIDDEN_POINTS_TOPIC = "hidden_object_points"
#: Service (occ_audit_ros/srv/HiddenObject) answering one hidden-object query per request.
HIDDEN_SERVICE = "hidden_object"
