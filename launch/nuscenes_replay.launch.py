"""Replay a nuScenes bag (from nuscenes_to_bag) through the perception node, with RViz.

    ros2 launch occ_audit_ros nuscenes_replay.launch.py bag:=output/demo/input_bag [rate:=1.0] [rviz:=true]

The perception node loads the same layered parameter files as ``perception.launch.py``
(``config/perception.yaml``, then ``config/models/<model>.yaml``) and then ``config/replay.yaml``:
reliable subscriptions for the camera images, camera_info and depth, which a replay across
processes needs (best-effort full-size images are lost between processes; live drivers keep the
best-effort default of ``perception.launch.py``).

Without launch_ros (the venv), the same composition runs in one process with
``python -m occ_audit_ros.nodes.launcher launch/nuscenes_replay.launch.py bag:=... rviz:=false``.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory("occ_audit_ros")
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 directory written by nuscenes_to_bag"),
        DeclareLaunchArgument("rate", default_value="1.0", description="replay rate factor"),
        DeclareLaunchArgument("loop", default_value="1", description="number of passes over the bag"),
        DeclareLaunchArgument("clip_model", default_value="openai/clip-vit-base-patch32"),
        DeclareLaunchArgument("model", default_value="relevancy",
                              description="relevancy | semabs | ago: loads config/models/<model>.yaml"),
        DeclareLaunchArgument("rviz", default_value="true"),
        Node(package="occ_audit_ros", executable="perception_node", name="perception_node", output="screen",
             # base, model overlay, then the replay overlay (reliable camera inputs); later files win
             parameters=[os.path.join(share, "config", "perception.yaml"),
                         [os.path.join(share, "config", "models", ""), LaunchConfiguration("model"), ".yaml"],
                         os.path.join(share, "config", "replay.yaml"),
                         {"clip_model": ParameterValue(LaunchConfiguration("clip_model"), value_type=str),
                          "use_sim_time": True}]),
        Node(package="occ_audit_ros", executable="bag_player", name="bag_player", output="screen",
             parameters=[{"bag": ParameterValue(LaunchConfiguration("bag"), value_type=str),
                          # typed: rate:=0 must stay a double, not become an integer
                          "rate": ParameterValue(LaunchConfiguration("rate"), value_type=float),
                          "loop": ParameterValue(LaunchConfiguration("loop"), value_type=int),
                          # start once the perception node listens (camera topics are volatile)
                          "wait_for_subscribers": ["/cam_front_left/image_raw", "/cam_front/image_raw",
                                                   "/cam_front_right/image_raw", "/cam_back_right/image_raw",
                                                   "/cam_back/image_raw", "/cam_back_left/image_raw"],
                          "wait_for_subscribers_timeout": 60.0}]),
        Node(package="rviz2", executable="rviz2", name="rviz2",
             arguments=["-d", os.path.join(share, "config", "rviz", "occ_audit.rviz")],
             parameters=[{"use_sim_time": True}], condition=IfCondition(LaunchConfiguration("rviz"))),
    ])
