//! The exponential moving average of a network's weights: the semi-supervised modes' teacher,
//! and the evaluated model of any run that sets `ema_decay`.
//!
//! The average lives on the plain (non-autodiff) device, as a second [`FerNet`]. Batch-norm
//! running statistics are averaged with the weights (as timm's `ModelEmaV2` does), so the
//! teacher's inference-mode batch norm matches its weights.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

use crate::model::FerNet;

/// The decay at `step`: `min(decay, (1+step)/(10+step))`, so that early in a run the average
/// follows the student instead of remembering its random initialisation for ~1/(1−decay) steps.
pub fn decay_at(decay: f64, step: usize) -> f64 {
    decay.min((1.0 + step as f64) / (10.0 + step as f64))
}

/// Every float tensor of a module (weights and running statistics), flattened, in visit order.
struct Collect(Vec<Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val().inner();
        let n = tensor.shape().num_elements();
        self.0.push(tensor.reshape([n]));
    }
}

/// Blends each float tensor with the student's one at the same position of the visit order.
struct Blend {
    student: std::vec::IntoIter<Tensor<1>>,
    decay: f32,
    mismatch: bool,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(student) = self.student.next() else {
            self.mismatch = true;
            return param;
        };
        let decay = self.decay;
        let mut mismatch = false;
        let param = param.map(|teacher| {
            let shape = teacher.shape();
            if shape.num_elements() != student.shape().num_elements() {
                mismatch = true;
                return teacher;
            }
            teacher
                .mul_scalar(decay)
                .add(student.reshape(shape).mul_scalar(1.0 - decay))
        });
        self.mismatch |= mismatch;
        param
    }
}

/// teacher ← decay·teacher + (1 − decay)·student, for every weight and running statistic.
pub fn update(teacher: FerNet, student: &FerNet, decay: f64) -> anyhow::Result<FerNet> {
    let mut collect = Collect(Vec::new());
    // `valid()` first: a batch-norm running statistic holds its latest update aside until the
    // next read, and a visitor sees the value before it. Without the sync the teacher would
    // average statistics one step old, and a resumed run (whose checkpoint saved the synced
    // value) would drift from the run it continues.
    student.valid().visit(&mut collect);
    let expected = collect.0.len();
    let mut blend = Blend {
        student: collect.0.into_iter(),
        decay: decay as f32,
        mismatch: false,
    };
    let teacher = teacher.map(&mut blend);
    if blend.mismatch || blend.student.len() != 0 {
        anyhow::bail!(
            "the EMA teacher and the student differ in shape ({expected} tensors in the student)"
        );
    }
    Ok(teacher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    fn tiny() -> ModelConfig {
        ModelConfig {
            widths: vec![4, 8],
            convs_per_stage: 1,
            dropout: 0.0,
        }
    }

    fn floats(model: &FerNet) -> Vec<f32> {
        let mut c = Collect(Vec::new());
        model.visit(&mut c);
        c.0.into_iter()
            .flat_map(|t| t.into_data().try_to_vec::<f32>().unwrap())
            .collect()
    }

    #[test]
    fn decay_warms_up_to_its_value() {
        assert!((decay_at(0.999, 0) - 0.1).abs() < 1e-12);
        assert!((decay_at(0.999, 90) - 0.91).abs() < 1e-12);
        assert!((decay_at(0.999, 1_000_000) - 0.999).abs() < 1e-12);
    }

    #[test]
    fn update_moves_each_tensor_towards_the_student() {
        let device = Device::flex();
        device.seed(1);
        let teacher = FerNet::new(&tiny(), 1, 3, &device);
        let student = FerNet::new(&tiny(), 1, 3, &device);
        let (t0, s) = (floats(&teacher), floats(&student));
        assert_eq!(t0.len(), s.len());
        assert!(t0.iter().zip(&s).any(|(a, b)| (a - b).abs() > 1e-3));
        let blended = update(teacher, &student, 0.75).unwrap();
        for ((t, s), b) in t0.iter().zip(&s).zip(floats(&blended)) {
            assert!((b - (0.75 * t + 0.25 * s)).abs() < 1e-6, "{b} vs {t}, {s}");
        }
        // decay 0 copies the student
        let copied = update(blended, &student, 0.0).unwrap();
        assert_eq!(floats(&copied), s);
    }

    #[test]
    fn update_refuses_a_student_of_another_shape() {
        let device = Device::flex();
        let teacher = FerNet::new(&tiny(), 1, 3, &device);
        let other = FerNet::new(&tiny(), 1, 4, &device);
        assert!(update(teacher, &other, 0.5).is_err());
    }
}
