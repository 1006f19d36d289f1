"""Launch the perception node with its layered YAML parameters (needs a ROS 2 install with launch_ros).

    ros2 launch occ_audit_ros perception.launch.py [model:=relevancy|semabs|ago] [params_file:=...]
        [clip_model:=...] [use_sim_time:=true]

Parameter files load in order, later ones win: ``params_file`` (the base, default
``config/perception.yaml``), then ``config/models/<model>.yaml`` (what the model changes, its own
``semabs.*`` / ``ago.*`` parameters), then the inline ``clip_model`` and ``use_sim_time``.

Without launch_ros (the venv): ``python -m occ_audit_ros.nodes.launcher launch/perception.launch.py ...``
runs the same node with the same parameter files in-process (see docs/nodes/perception_node.md).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory("occ_audit_ros")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "perception.yaml"),
                              description="base YAML parameters of perception_node"),
        DeclareLaunchArgument("model", default_value="relevancy",
                              description="relevancy | semabs | ago: loads config/models/<model>.yaml after params_file"),
        DeclareLaunchArgument("clip_model", default_value="openai/clip-vit-base-patch32",
                              description="CLIP checkpoint directory or hub id ('random' for offline demos)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
        Node(
            package="occ_audit_ros",
            executable="perception_node",
            name="perception_node",
            output="screen",
            # a list of text and substitutions is one concatenated parameter-file path (launch_ros)
            parameters=[LaunchConfiguration("params_file"),
                        [os.path.join(share, "config", "models", ""), LaunchConfiguration("model"), ".yaml"],
                        {"clip_model": ParameterValue(LaunchConfiguration("clip_model"), value_type=str),
                         "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)}],
        ),
    ])
