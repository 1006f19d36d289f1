"""pip install of occ_audit_ros into a plain virtual environment (``scripts/setup_env.sh``).

On a ROS 2 install the package is built by colcon through CMakeLists.txt (ament_cmake, which also
generates the messages); this file serves the venv path, where ``scripts/build_msgs.py`` generates
the messages with the rosidl wheels.
"""

from pathlib import Path

from setuptools import find_packages, setup

RUNTIME_SCRIPTS = {
    # ROS 2 executables (also installed to lib/occ_audit_ros/ by CMakeLists.txt for ``ros2 run``)
    "perception_node": "occ_audit_ros.nodes.perception_node:main",
    "bag_player": "occ_audit_ros.nodes.bag_player:main",
    "bag_recorder": "occ_audit_ros.nodes.bag_recorder:main",
    "nuscenes_to_bag": "occ_audit_ros.tools.nuscenes_to_bag:main",
    "occ_audit_demo": "occ_audit_ros.tools.demo:main",
    # runtime tools
    "occ_audit_launch": "occ_audit_ros.nodes.launcher:main",
    "occ_audit_relevancy": "occ_audit_ros.tools.relevancy_cli:main",
    "occ_audit_params": "occ_audit_ros.params:main",
    "occ_audit_semabs_import": "occ_audit_ros.semabs.importer:main",
}
TRAINING_SCRIPTS = {
    "occ_audit_train_ago": "training.train_ago:main",
    "occ_audit_train_semabs": "training.train_semabs:main",
    "occ_audit_semabs_card": "training.semabs_card:main",
    "occ_audit_generate_audits": "training.visa.generate:main",
    "occ_audit_sim_generate": "training.sim.generate:main",
    "occ_audit_sim_figures": "training.sim.figures:main",
    "occ_audit_semabs_pack": "training.semabs.pack:main",
    "occ_audit_semabs_demo": "training.semabs.demo:main",
    "occ_audit_semabs_demo_nuscenes": "training.semabs.demo_nuscenes:main",
    "occ_audit_ago_eval": "training.ago.eval:main",
    "occ_audit_ago_keyframe_gt": "training.ago.keyframe_gt:main",
    # experiment drivers (training/experiments/)
    "occ_audit_exp_visa_sim": "training.experiments.visa_sim:main",
    "occ_audit_exp_ago_sim": "training.experiments.ago_sim_experiments:main",
    "occ_audit_exp_ago_sim_eval": "training.experiments.ago_sim_eval:main",
    "occ_audit_exp_semabs_sim": "training.experiments.semabs_sim:main",
    "occ_audit_exp_semabs_parallel": "training.experiments.semabs_parallel:main",
    "occ_audit_exp_semabs_report": "training.experiments.semabs_report:main",
    "occ_audit_exp_semabs_small_objects": "training.experiments.semabs_small_objects:main",
    "occ_audit_exp_semabs_vool_logits": "training.experiments.semabs_vool_logits:main",
}


def _read_requirements(name: str) -> list[str]:
    lines = (Path(__file__).resolve().parent / name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


setup(
    name="occ_audit_ros",
    version="0.1.0",
    description="Open-vocabulary 3D semantic occupancy for ROS 2 (Semantic Abstraction, AGO, VISA)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["occ_audit_ros", "occ_audit_ros.*", "training", "training.*"]),
    package_data={"training": ["config/*.yaml"]},
    extras_require={"training": _read_requirements("requirements-training.txt")},
    entry_points={
        "console_scripts": [f"{name} = {target}" for name, target in
                            {**RUNTIME_SCRIPTS, **TRAINING_SCRIPTS}.items()],
    },
)
