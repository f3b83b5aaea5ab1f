//! Image files as users bring them (issue 23): JPEG with an EXIF orientation, 16-bit PNG,
//! gray + alpha, RGBA on a background or kept, WebP; a truncated JPEG is one error naming it.

use diffuse_data::datasets::{Dataset, ImageFolder};
use diffuse_data::image_io::{self, Background};
use std::path::Path;

fn jpeg(img: &image::RgbImage) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img.clone())
        .write_to(&mut buf, image::ImageFormat::Jpeg)
        .unwrap();
    buf.into_inner()
}

/// `jpeg` with an EXIF APP1 segment after SOI whose Orientation (0x0112) is `o`.
fn with_orientation(jpeg: &[u8], o: u16) -> Vec<u8> {
    let mut tiff = b"II*\0\x08\0\0\0".to_vec();
    tiff.extend(1u16.to_le_bytes()); // one IFD entry
    tiff.extend(0x0112u16.to_le_bytes());
    tiff.extend(3u16.to_le_bytes()); // SHORT
    tiff.extend(1u32.to_le_bytes());
    tiff.extend((o as u32).to_le_bytes());
    tiff.extend(0u32.to_le_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend([0xff, 0xe1]);
    out.extend(((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    out.extend(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_turns_a_jpeg_upright() {
    // 8 wide × 4 high: red on the left half, blue on the right.
    let img = image::RgbImage::from_fn(8, 4, |x, _| {
        if x < 4 {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 0, 255])
        }
    });
    let plain = image_io::decode(&jpeg(&img), Path::new("a.jpg")).unwrap();
    assert_eq!((plain.width(), plain.height()), (8, 4));
    // Orientation 6: stored rotated; shown after a 90° clockwise turn, so 4 wide × 8 high with
    // red (the stored left) on top.
    let turned = image_io::decode(&with_orientation(&jpeg(&img), 6), Path::new("b.jpg")).unwrap();
    assert_eq!((turned.width(), turned.height()), (4, 8));
    let rgb = turned.to_rgb8();
    let (top, bottom) = (rgb.get_pixel(2, 1), rgb.get_pixel(2, 6));
    assert!(top[0] > 200 && top[2] < 60, "{top:?}");
    assert!(bottom[2] > 200 && bottom[0] < 60, "{bottom:?}");
}

#[test]
fn sixteen_bit_gray_alpha_rgba_and_webp_decode_to_what_users_expect() {
    let dir = tempfile::tempdir().unwrap();
    // 16-bit gray: 65535 → 255.
    let g16 = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(3, 2, |x, _| {
        image::Luma([if x == 0 { 65535 } else { 0 }])
    });
    let p16 = dir.path().join("g16.png");
    g16.save(&p16).unwrap();
    let img = image_io::open(&p16).unwrap();
    assert_eq!(image_io::channels_of(&img, Background::default()), 1);
    assert_eq!(
        image_io::pixels(&img, 1, Background::default()),
        [255, 0, 0, 255, 0, 0]
    );

    // Gray + alpha: a transparent pixel becomes the background, an opaque one keeps its value.
    let la =
        image::ImageBuffer::<image::LumaA<u8>, _>::from_raw(2, 1, vec![10, 0, 10, 255]).unwrap();
    let pla = dir.path().join("la.png");
    la.save(&pla).unwrap();
    let img = image_io::open(&pla).unwrap();
    assert_eq!(
        image_io::pixels(&img, 1, Background::parse("white").unwrap()),
        [255, 10]
    );
    assert_eq!(
        image_io::pixels(&img, 1, Background::parse("black").unwrap()),
        [0, 10]
    );

    // RGBA: half-transparent red on white is pink; kept, alpha is the 4th channel.
    let rgba = image::RgbaImage::from_raw(1, 1, vec![255, 0, 0, 128]).unwrap();
    let prgba = dir.path().join("rgba.png");
    rgba.save(&prgba).unwrap();
    let img = image_io::open(&prgba).unwrap();
    assert_eq!(
        image_io::pixels(&img, 3, Background::default()),
        [255, 127, 127]
    );
    assert_eq!(image_io::channels_of(&img, Background::Alpha), 4);
    assert_eq!(
        image_io::pixels(&img, 4, Background::Alpha),
        [255, 0, 0, 128]
    );
    assert_eq!(
        image_io::pixels(&img, 3, Background::parse("#0000ff").unwrap()),
        [128, 0, 127]
    );

    // WebP (lossless): the exact pixels back.
    let rgb = image::RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 50, y as u8 * 80, 7]));
    let pw = dir.path().join("x.webp");
    rgb.save(&pw).unwrap();
    assert_eq!(image_io::open(&pw).unwrap().to_rgb8(), rgb);

    assert!(Background::parse("purple")
        .unwrap_err()
        .to_string()
        .contains("#rrggbb"));
    for b in ["white", "black", "alpha", "#102030"] {
        assert_eq!(Background::parse(b).unwrap().name(), b);
    }
}

#[test]
fn a_jpeg_folder_reads_with_its_classes_and_a_truncated_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for (class, n) in [("cat", 3), ("dog", 2)] {
        let d = dir.path().join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            let img = image::RgbImage::from_fn(10, 6, |x, y| {
                image::Rgb([x as u8 * 20, y as u8 * 30, i as u8 * 60])
            });
            std::fs::write(d.join(format!("{i}.jpg")), jpeg(&img)).unwrap();
        }
    }
    let whole = std::fs::read(dir.path().join("dog/1.jpg")).unwrap();
    std::fs::write(dir.path().join("dog/2.jpeg"), &whole[..whole.len() / 3]).unwrap();
    let ds = ImageFolder::open(dir.path()).unwrap();
    assert_eq!((ds.len(), ds.channels()), (6, 3));
    assert_eq!(ds.class_names(), ["cat", "dog"]);
    let mut bad = Vec::new();
    for i in 0..ds.len() {
        match ds.get(i) {
            Ok(s) => assert_eq!((s.width, s.height, s.channels), (10, 6, 3)),
            Err(e) => bad.push(e.to_string()),
        }
    }
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].contains("dog/2.jpeg") && !bad[0].contains('\n'),
        "{}",
        bad[0]
    );
}

/// Found by fuzzing: a PNG header that claims 6 × 4,278,124,549 pixels (77 GB once decoded;
/// `fuzz/regressions/image/`) is an error under the image crate's 512 MiB limit, not an abort.
#[test]
fn a_header_that_claims_a_huge_image_is_refused() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions/image/png_claims_77gb.png");
    let bytes = std::fs::read(&p).unwrap();
    let e = image_io::decode(&bytes, &p).unwrap_err().to_string();
    assert!(
        e.contains("png_claims_77gb.png") && !e.contains('\n'),
        "{e}"
    );
}

/// Found by fuzzing: a JPEG claiming 57,601 × 2,310 pixels (400 MB decoded, 2.1 GB with the
/// decoder's buffers) is over the 128 MiB cap and refused before decoding.
#[test]
fn a_jpeg_over_the_decoded_size_cap_is_refused() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions/image/jpeg_claims_57601x2310.jpg");
    let e = image_io::decode(&std::fs::read(&p).unwrap(), &p)
        .unwrap_err()
        .to_string();
    assert!(e.to_lowercase().contains("limit"), "{e}");
}
