"""Semantic Abstraction 3D module (Ha & Song, CoRL 2022, Sec. 3-4, App. 6), ROS-free.

* :mod:`.pointcloud` - relevancy maps + depth + intrinsics + camera pose -> relevancy point cloud in the
  workspace frame, N-point sampling, scatter-max into the feature grid.
* :mod:`.unet3d` - residual 3D U-Net (ExtResNet blocks, GroupNorm, transposed-conv upsampling).
* :mod:`.model` - OVSSC completion network and VOOL localisation head.
* :mod:`.metrics` - voxel IoU at 32^3 with a global cutoff sweep; :mod:`.baselines` - the two baselines.
* :mod:`.toy` - a tiny procedural box scene generator for tests and smoke runs (not the simulator).
* :mod:`.checkpoint` - safetensors checkpoints with the model configuration; :mod:`.inference` - the
  predictor a node calls (our protocol or the released code's); :mod:`.importer` - converts the released
  Semantic Abstraction checkpoints (``occ_audit_semabs_import``).
"""
