"""occ_audit_ros: open-vocabulary 3D semantic occupancy for ROS 2.

The package root and every module outside ``occ_audit_ros.nodes`` are ROS-free: they import
numpy / torch / transformers but never ``rclpy``, so ``training/`` and benchmarks use them
without a ROS install. Node modules in ``occ_audit_ros.nodes`` are thin rclpy adapters.
"""

__version__ = "0.1.0"
