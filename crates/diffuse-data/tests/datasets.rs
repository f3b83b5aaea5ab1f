//! Data sets and loader: the bundled MNIST as it should be, CIFAR-10 binary files made here,
//! image folders, corrupt and truncated files named with their offsets, and a loader whose
//! order depends only on the seed (not on threads) and resumes exactly.

use diffuse_data::datasets::{self, Cifar10, Dataset, IdxDataset, ImageFolder, Split};
use diffuse_data::loader::{Loader, LoaderConfig, Position};
use diffuse_data::transform::{Fit, Transform};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn mnist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")
}

#[test]
fn bundled_mnist_is_the_real_thing() {
    let ds = IdxDataset::open_dir(&mnist_dir(), "train").unwrap();
    assert_eq!(ds.len(), 60_000);
    let mut counts = [0usize; 10];
    let mut sum = 0u64;
    for i in 0..ds.len() {
        let s = ds.get(i).unwrap();
        counts[s.label.unwrap() as usize] += 1;
        sum += s.pixels.iter().map(|&p| p as u64).sum::<u64>();
    }
    assert_eq!(
        counts,
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    let mean = sum as f64 / (60_000.0 * 784.0 * 255.0);
    assert!((mean - 0.1307).abs() < 1e-4, "{mean}");
    let test = datasets::open("mnist", Split::Test).unwrap();
    assert_eq!(test.len(), 10_000);
    assert!(datasets::known_datasets()
        .iter()
        .any(|k| k.name == "mnist" && k.found.is_some()));
}

fn write_gz(path: &Path, bytes: &[u8]) {
    let mut e = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    e.write_all(bytes).unwrap();
    e.finish().unwrap();
}

fn idx_images(n: u32, h: u32, w: u32) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 3];
    for d in [n, h, w] {
        v.extend(d.to_be_bytes());
    }
    v.extend((0..n * h * w).map(|i| (i % 256) as u8));
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 1];
    v.extend((labels.len() as u32).to_be_bytes());
    v.extend(labels);
    v
}

#[test]
fn truncated_and_corrupt_idx_files_name_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = idx_images(3, 4, 4);
    // Raw, cut in the middle of item 2.
    let cut = dir.path().join("cut-images-idx3-ubyte");
    std::fs::write(&cut, &imgs[..16 + 2 * 16 + 5]).unwrap();
    std::fs::write(
        dir.path().join("cut-labels-idx1-ubyte"),
        idx_labels(&[1, 2, 3]),
    )
    .unwrap();
    let e = IdxDataset::open_dir(dir.path(), "cut")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("cut-images-idx3-ubyte") && e.contains("truncated") && e.contains("offset 48"),
        "{e}"
    );
    // Gzip whose stream is cut.
    let gz = dir.path().join("gz-images-idx3-ubyte.gz");
    write_gz(&gz, &imgs);
    let bytes = std::fs::read(&gz).unwrap();
    std::fs::write(&gz, &bytes[..bytes.len() - 12]).unwrap();
    write_gz(
        &dir.path().join("gz-labels-idx1-ubyte.gz"),
        &idx_labels(&[1, 2, 3]),
    );
    let e = IdxDataset::open_dir(dir.path(), "gz")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("gz-images-idx3-ubyte.gz") && e.contains("corrupt gzip"),
        "{e}"
    );
    // Not an IDX file at all.
    std::fs::write(dir.path().join("bad-images-idx3-ubyte"), b"PK\x03\x04 zip?").unwrap();
    std::fs::write(dir.path().join("bad-labels-idx1-ubyte"), idx_labels(&[1])).unwrap();
    let e = IdxDataset::open_dir(dir.path(), "bad")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("not an unsigned-byte IDX") && e.contains("offset 0"),
        "{e}"
    );
}

fn cifar_record(label: u8, seed: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..3072).map(|i| ((i as u32 * 7 + seed as u32) % 256) as u8));
    r
}

#[test]
fn cifar10_binary_reader() {
    let dir = tempfile::tempdir().unwrap();
    for b in 1..=5 {
        let recs: Vec<u8> = (0..4)
            .flat_map(|k| cifar_record(k as u8 + b, k as u8))
            .collect();
        std::fs::write(dir.path().join(format!("data_batch_{b}.bin")), recs).unwrap();
    }
    std::fs::write(dir.path().join("test_batch.bin"), cifar_record(9, 1)).unwrap();
    let train = Cifar10::open_dir(dir.path(), Split::Train).unwrap();
    assert_eq!(train.len(), 20);
    let s = train.get(0).unwrap();
    assert_eq!(
        (s.width, s.height, s.channels, s.label),
        (32, 32, 3, Some(1))
    );
    // HWC: pixel 0's green is plane 1's first byte, i.e. record byte 1 + 1024.
    let rec = cifar_record(1, 0);
    assert_eq!(s.pixels[1], rec[1 + 1024]);
    assert_eq!(s.pixels[3 * 5 + 2], rec[1 + 2048 + 5]);
    let test = datasets::open(dir.path().to_str().unwrap(), Split::Test).unwrap();
    assert_eq!(test.len(), 1);
    // A cut file names the incomplete record's offset.
    let mut cut = cifar_record(0, 0);
    cut.extend(&cifar_record(1, 0)[..100]);
    std::fs::write(dir.path().join("data_batch_3.bin"), cut).unwrap();
    let e = Cifar10::open_dir(dir.path(), Split::Train)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("data_batch_3.bin") && e.contains("offset 3073"),
        "{e}"
    );
}

#[test]
fn image_folder_with_classes_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    for (class, n) in [("cats", 3), ("dogs", 2)] {
        let d = dir.path().join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            image::RgbImage::from_fn(6, 4, |x, y| {
                image::Rgb([x as u8 * 40, y as u8 * 60, i * 50])
            })
            .save(d.join(format!("{i}.png")))
            .unwrap();
        }
    }
    std::fs::write(
        dir.path().join("dogs/broken.png"),
        b"\x89PNG but not really",
    )
    .unwrap();
    // Hidden folders and files (a notebook's checkpoints, macOS's `._` files) are no data.
    std::fs::create_dir_all(dir.path().join(".ipynb_checkpoints")).unwrap();
    std::fs::copy(
        dir.path().join("cats/0.png"),
        dir.path().join(".ipynb_checkpoints/0.png"),
    )
    .unwrap();
    std::fs::write(dir.path().join("cats/._0.png"), b"AppleDouble").unwrap();
    let ds = ImageFolder::open(dir.path()).unwrap();
    assert_eq!(ds.len(), 6);
    assert_eq!(ds.class_names(), vec!["cats", "dogs"]);
    assert_eq!(ds.channels(), 3);
    let bad = (0..ds.len()).find(|&i| ds.get(i).is_err()).unwrap();
    let e = ds.get(bad).unwrap_err().to_string();
    assert!(e.contains("broken.png"), "{e}");

    let ds: Arc<dyn Dataset> = Arc::new(ds);
    let cfg = |skip_bad| LoaderConfig {
        batch_size: 6,
        seed: 1,
        workers: 2,
        shuffle: true,
        skip_bad,
        transform: Transform {
            size: 8,
            fit: Fit::Resize,
            hflip: true,
        },
    };
    let mut strict = Loader::new(ds.clone(), cfg(false), Position::default()).unwrap();
    assert!(strict
        .next_batch()
        .unwrap_err()
        .to_string()
        .contains("broken.png"));
    let mut lenient = Loader::new(ds, cfg(true), Position::default()).unwrap();
    let b = lenient.next_batch().unwrap();
    assert_eq!(b.shape, [5, 3, 8, 8]);
    assert_eq!(b.skipped.len(), 1);
    let labels = b.labels.unwrap();
    assert_eq!(labels.iter().filter(|&&l| l == 0).count(), 3);
}

fn mnist_loader(workers: usize, start: Position) -> Loader {
    let ds: Arc<dyn Dataset> = Arc::new(IdxDataset::open_dir(&mnist_dir(), "t10k").unwrap());
    Loader::new(
        ds,
        LoaderConfig {
            batch_size: 512,
            seed: 7,
            workers,
            shuffle: true,
            skip_bad: false,
            transform: Transform {
                size: 32,
                fit: Fit::Pad,
                hflip: true,
            },
        },
        start,
    )
    .unwrap()
}

#[test]
fn loader_order_depends_on_the_seed_only_and_resumes_exactly() {
    let mut one = mnist_loader(1, Position::default());
    let mut four = mnist_loader(4, Position::default());
    assert_eq!(one.batches_per_epoch(), 19); // 10000 / 512, last partial batch dropped
    let mut seen = Vec::new();
    for _ in 0..25 {
        let (a, b) = (one.next_batch().unwrap(), four.next_batch().unwrap());
        assert_eq!(a.position, b.position);
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.pixels, b.pixels);
        seen.push(a);
    }
    assert_eq!(seen[19].position, Position { epoch: 1, batch: 0 });
    assert_ne!(
        seen[0].labels, seen[19].labels,
        "each epoch has its own order"
    );
    assert_eq!(seen[0].shape, [512, 1, 32, 32]);
    // Resume from batch 21 reproduces what followed.
    let mut resumed = mnist_loader(2, seen[21].position);
    for b in &seen[21..] {
        let r = resumed.next_batch().unwrap();
        assert_eq!(
            (r.position, &r.labels, &r.pixels),
            (b.position, &b.labels, &b.pixels)
        );
    }
    // An epoch visits distinct samples: no label multiset can exceed MNIST test's class counts.
    let labels: Vec<u32> = seen[..19]
        .iter()
        .flat_map(|b| b.labels.clone().unwrap())
        .collect();
    assert_eq!(labels.len(), 19 * 512);
}

#[test]
fn sharded_loaders_hand_out_contiguous_slices_of_the_global_batches() {
    // Two data-parallel ranks (DDP): rank r gets rows r·256..(r+1)·256 of each global batch of
    // 512, flips and positions included; resuming a shard continues the same slices.
    let mut whole = mnist_loader(1, Position::default());
    let mut shards: Vec<Loader> = (0..2)
        .map(|r| {
            let mut l = mnist_loader(1, Position::default());
            l.set_shard(r, 2).unwrap();
            l
        })
        .collect();
    let per = 32 * 32;
    for _ in 0..3 {
        let w = whole.next_batch().unwrap();
        for (r, l) in shards.iter_mut().enumerate() {
            let b = l.next_batch().unwrap();
            assert_eq!(b.position, w.position);
            assert_eq!(b.shape, [256, 1, 32, 32]);
            assert_eq!(
                b.labels.as_deref(),
                Some(&w.labels.as_ref().unwrap()[r * 256..(r + 1) * 256])
            );
            assert_eq!(b.pixels, w.pixels[r * 256 * per..(r + 1) * 256 * per]);
        }
    }
    let mut l = mnist_loader(1, Position::default());
    assert!(
        l.set_shard(0, 3).is_err(),
        "512 rows do not split over 3 ranks"
    );
}

#[test]
fn the_loader_alone_is_measured_over_whole_batches_past_an_epoch_end() {
    let ds: Arc<dyn Dataset> = Arc::new(IdxDataset::open_dir(&mnist_dir(), "t10k").unwrap());
    let config = LoaderConfig {
        batch_size: 512,
        seed: 7,
        workers: 2,
        shuffle: true,
        skip_bad: false,
        transform: Transform {
            size: 32,
            fit: Fit::Pad,
            hflip: false,
        },
    };
    // 19 batches per epoch: 25 timed batches cross into the second epoch.
    let t = diffuse_data::loader::measure(ds, config, 25).unwrap();
    assert_eq!(t.images, 25 * 512);
    assert!(t.seconds > 0.0 && t.first_batch_s > 0.0);
    assert!(t.images_per_s() > 0.0 && t.images_per_s().is_finite());
}
