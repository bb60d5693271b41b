"""Bring your own faces: MTCNN landmarks (weights from the facenet-pytorch wheel), FFHQ alignment and head pose.

    detector = FaceDetector()                       # FaceWeightsMissing: pip install --no-deps facenet-pytorch
    aligned = align_face(detector, photo, 256)      # photo uint8 [H, W, 3] → crop, landmarks, pose
    aligned.pose.angles                             # our camera's (yaw, pitch, roll), radians
"""

from epigraf.faces.align import Alignment, crop_aligned, ffhq_alignment
from epigraf.faces.detector import LANDMARK_NAMES, DetectorConfig, Face, FaceDetector, NoFaceError
from epigraf.faces.face_dataset import FaceDataset, build_face_dataset
from epigraf.faces.head_pose import FACE_TEMPLATE, HeadPose, camera_angles, estimate_pose
from epigraf.faces.nets import INSTALL_HINT, FaceWeightsMissing
from epigraf.faces.photo import AlignedFace, align_face, photo_array

__all__ = [
    "FACE_TEMPLATE", "INSTALL_HINT", "LANDMARK_NAMES", "AlignedFace", "Alignment", "DetectorConfig", "Face",
    "FaceDataset", "FaceDetector", "FaceWeightsMissing", "HeadPose", "NoFaceError", "align_face",
    "build_face_dataset", "camera_angles", "crop_aligned", "estimate_pose", "ffhq_alignment", "photo_array",
]
