//! Classification metrics: accuracy, per-class F1, macro-F1 (the ABAW metric), confusion matrix.

use serde::{Deserialize, Serialize};

/// `matrix[truth][predicted]` counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    pub matrix: Vec<Vec<u64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class_f1: Vec<f64>,
    pub confusion: Confusion,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Self {
            matrix: vec![vec![0; classes]; classes],
        }
    }

    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.matrix[truth][predicted] += 1;
    }

    pub fn scores(&self) -> Scores {
        let n = self.matrix.len();
        let total: u64 = self.matrix.iter().flatten().sum();
        let correct: u64 = (0..n).map(|i| self.matrix[i][i]).sum();
        let per_class_f1: Vec<f64> = (0..n)
            .map(|c| {
                let tp = self.matrix[c][c] as f64;
                let predicted: u64 = (0..n).map(|t| self.matrix[t][c]).sum();
                let actual: u64 = self.matrix[c].iter().sum();
                if predicted + actual == 0 {
                    0.0
                } else {
                    2.0 * tp / (predicted + actual) as f64
                }
            })
            .collect();
        Scores {
            accuracy: if total == 0 {
                0.0
            } else {
                correct as f64 / total as f64
            },
            macro_f1: per_class_f1.iter().sum::<f64>() / n.max(1) as f64,
            per_class_f1,
            confusion: self.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_scores() {
        let mut c = Confusion::new(2);
        // truth 0: 8 right, 2 wrong; truth 1: 1 right, 1 wrong
        for _ in 0..8 {
            c.add(0, 0);
        }
        for _ in 0..2 {
            c.add(0, 1);
        }
        c.add(1, 1);
        c.add(1, 0);
        let s = c.scores();
        assert!((s.accuracy - 0.75).abs() < 1e-12);
        // class 0: tp 8, predicted 9, actual 10 → 16/19; class 1: tp 1, predicted 3, actual 2 → 2/5
        assert!((s.per_class_f1[0] - 16.0 / 19.0).abs() < 1e-12);
        assert!((s.per_class_f1[1] - 0.4).abs() < 1e-12);
        assert!((s.macro_f1 - (16.0 / 19.0 + 0.4) / 2.0).abs() < 1e-12);
    }
}
