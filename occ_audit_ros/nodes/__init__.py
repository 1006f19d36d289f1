"""rclpy adapters of occ_audit_ros: the only part of the package that imports ROS 2 Python modules."""
