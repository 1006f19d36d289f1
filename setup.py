"""pip install of occ_audit_ros into a plain virtual environment (``scripts/setup_env.sh``).

On a ROS 2 install the package is built by colcon through CMakeLists.txt (ament_cmake, which also
generates the messages); this file serves the venv path, where ``scripts/build_msgs.py`` generates
the messages with the rosidl wheels.
"""

from setuptools import find_packages, setup

setup(
    name="occ_audit_ros",
    version="0.1.0",
    description="Open-vocabulary 3D semantic occupancy for ROS 2 (Semantic Abstraction, AGO, VISA)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["occ_audit_ros", "occ_audit_ros.*"]),
    entry_points={
        "console_scripts": [
            "perception_node = occ_audit_ros.nodes.perception_node:main",
            "bag_player = occ_audit_ros.nodes.bag_player:main",
            "bag_recorder = occ_audit_ros.nodes.bag_recorder:main",
            "nuscenes_to_bag = occ_audit_ros.tools.nuscenes_to_bag:main",
            "occ_audit_demo = occ_audit_ros.tools.demo:main",
        ],
    },
)
