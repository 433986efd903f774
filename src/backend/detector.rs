//! Face detection: the contract's detectors (CenterFace, UltraFace) (shared with the trainer, which measures its
//! datasets' framing with it), its errors mapped into the backend's.

pub use fer_contract::detect::{
    DetectError, DetectOptions, Detection, DetectorKind, FaceDetector, Landmarks, crop_box,
    face_crop, non_maximum_suppression,
};

use super::BackendError;

impl From<DetectError> for BackendError {
    fn from(e: DetectError) -> Self {
        match e {
            DetectError::Load { path, message } => BackendError::Load { path, message },
            DetectError::Mismatch { path, message } => BackendError::Mismatch { path, message },
            DetectError::Run(message) => BackendError::Run(message),
        }
    }
}
