//! Does a text-to-image model draw what its prompt says? A check without CLIP (none exists on
//! this machine): each generated image's nearest real image by features (Inception pool3,
//! Euclidean), and whether that neighbour's class (OpenMoji: its group) is the prompt's. The
//! chance level of a prompt is the share of its class among the real images searched: the
//! match rate of images whose neighbours fall anywhere at random.

use crate::metrics::Features;
use crate::{Error, Result};
use serde::Serialize;

/// One prompt's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct PromptMatch {
    pub prompt: String,
    /// The class of the image the prompt captions.
    pub class: u32,
    pub class_name: String,
    /// Whether the prompt's images were left out of training.
    pub held_out: bool,
    /// Per generated image: the nearest real image (index into the searched set) and its class.
    pub nearest: Vec<(usize, u32)>,
    /// Share of the generated images whose nearest real image has the prompt's class.
    pub match_rate: f64,
    /// The class's share of the searched images.
    pub chance: f64,
}

/// The nearest row of `real` to each row of `generated` (squared Euclidean distance).
pub fn nearest(generated: &Features, real: &Features) -> Result<Vec<usize>> {
    if generated.ncols() != real.ncols() || real.nrows() == 0 {
        return Err(Error::Input(format!(
            "features of {} and {} dimensions ({} real rows): nothing to compare",
            generated.ncols(),
            real.ncols(),
            real.nrows()
        )));
    }
    // ‖g − r‖² = ‖g‖² − 2 g·r + ‖r‖²: one matrix product.
    let dots = generated * real.transpose(); // [n, m]
    let rn: Vec<f64> = real.row_iter().map(|r| r.norm_squared()).collect();
    Ok((0..generated.nrows())
        .map(|i| {
            (0..real.nrows())
                .map(|j| (j, rn[j] - 2.0 * dots[(i, j)]))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(j, _)| j)
                .expect("rows")
        })
        .collect())
}

/// A prompt to check: its text, class and whether it was held out of training.
#[derive(Debug, Clone)]
pub struct PromptCase {
    pub prompt: String,
    pub class: u32,
    pub held_out: bool,
}

/// The outcome of each case: `generated` holds `per_prompt` rows per case, in case order;
/// `real` the searched images' features and `real_classes` their classes.
pub fn class_match(
    cases: &[PromptCase],
    class_names: &[String],
    generated: &Features,
    per_prompt: usize,
    real: &Features,
    real_classes: &[u32],
) -> Result<Vec<PromptMatch>> {
    if generated.nrows() != cases.len() * per_prompt || real.nrows() != real_classes.len() {
        return Err(Error::Input(format!(
            "{} generated rows for {} prompts × {per_prompt}, {} real rows for {} classes",
            generated.nrows(),
            cases.len(),
            real.nrows(),
            real_classes.len()
        )));
    }
    let near = nearest(generated, real)?;
    let m = real_classes.len() as f64;
    Ok(cases
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let nearest: Vec<(usize, u32)> = near[k * per_prompt..(k + 1) * per_prompt]
                .iter()
                .map(|&j| (j, real_classes[j]))
                .collect();
            let hits = nearest.iter().filter(|(_, g)| *g == c.class).count();
            PromptMatch {
                prompt: c.prompt.clone(),
                class: c.class,
                class_name: class_names
                    .get(c.class as usize)
                    .cloned()
                    .unwrap_or_else(|| c.class.to_string()),
                held_out: c.held_out,
                nearest,
                match_rate: hits as f64 / per_prompt.max(1) as f64,
                chance: real_classes.iter().filter(|&&g| g == c.class).count() as f64 / m,
            }
        })
        .collect())
}

/// Mean match rate and mean chance over `results` (all, or the held-out ones).
pub fn summary(results: &[PromptMatch], held_out: Option<bool>) -> (f64, f64, usize) {
    let picked: Vec<&PromptMatch> = results
        .iter()
        .filter(|r| held_out.is_none_or(|h| r.held_out == h))
        .collect();
    let n = picked.len().max(1) as f64;
    (
        picked.iter().map(|r| r.match_rate).sum::<f64>() / n,
        picked.iter().map(|r| r.chance).sum::<f64>() / n,
        picked.len(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::DMatrix;

    #[test]
    fn the_nearest_real_image_decides_the_match_and_chance_is_the_class_share() {
        // Real: two class-0 points near the origin, one class-1 point far away.
        let real = DMatrix::from_row_slice(3, 2, &[0.0, 0.0, 0.1, 0.0, 10.0, 10.0]);
        let classes = [0, 0, 1];
        // Two prompts × two images: the first prompt's images land near class 0 and near
        // class 1, the second's both near class 1.
        let generated =
            DMatrix::from_row_slice(4, 2, &[0.09, 0.0, 9.0, 9.0, 11.0, 10.0, 10.0, 9.5]);
        let cases = [
            PromptCase {
                prompt: "red square".into(),
                class: 0,
                held_out: false,
            },
            PromptCase {
                prompt: "blue heart".into(),
                class: 1,
                held_out: true,
            },
        ];
        let names = vec!["symbols".to_string(), "smileys".to_string()];
        let r = class_match(&cases, &names, &generated, 2, &real, &classes).unwrap();
        assert_eq!(r[0].nearest, vec![(1, 0), (2, 1)]);
        assert_eq!((r[0].match_rate, r[1].match_rate), (0.5, 1.0));
        assert!((r[0].chance - 2.0 / 3.0).abs() < 1e-12 && (r[1].chance - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(r[1].class_name, "smileys");
        let (rate, chance, n) = summary(&r, Some(true));
        assert_eq!((rate, n), (1.0, 1));
        assert!((chance - 1.0 / 3.0).abs() < 1e-12);
        assert!(class_match(&cases, &names, &generated, 3, &real, &classes).is_err());
    }
}
