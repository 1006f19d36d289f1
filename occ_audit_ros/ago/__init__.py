"""AGO: adaptive grounding for open-world 3D occupancy (Li et al., ICCV 2025), ROS-free runtime part.

Modules (one job each):

* :mod:`.classes`   Occ3D label space and the frozen class lists of ``config/ago_classes.yaml``.
* :mod:`.text`      text encoders (all-MiniLM-L6-v2, CLIP text) behind one interface, with a cache.
* :mod:`.prompts`   class phrases, noise words, the frozen text bank (AGO Eq. 3-4 inputs).
* :mod:`.losses`    grounding CE + Lovasz-softmax, binary occupancy, alignment (AGO Eq. 5-8).
* :mod:`.head`      grounding head, free embedding, modality adapter, open-world identifier (Eq. 9).
* :mod:`.network`   image encoders, camera-to-voxel lifting and the 3D conv network.
* :mod:`.infer`     one call for the perception node.

Training data, GT occupancy and the Occ3D evaluator are offline code in :mod:`training.ago`.
"""
