"""crossmodal: single-image face surface-normal estimation.

Built around "Cross-modal Deep Face Normals with Deactivable Skip Connections"
(Abrevaya, Boukhayma, Torr, Boyer; CVPR 2020). One normal-map convention is used
everywhere inside the package: camera space, +x right, +y up, +z towards the camera
(see :mod:`crossmodal.normals`).
"""

__version__ = "0.1.0"
