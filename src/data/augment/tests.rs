use super::*;

fn ramp(shape: Planes) -> Vec<f32> {
    (0..shape.len()).map(|i| i as f32).collect()
}

#[test]
fn normalize_uses_per_channel_constants() {
    let shape = Planes::new(3, 1, 2);
    let mut v = vec![0.4914, 1.0, 0.4822, 0.0, 0.0, 0.4465];
    normalize(&mut v, shape, &CIFAR_MEAN, &CIFAR_RESNET_STD).unwrap();
    assert_eq!(v[0], 0.0);
    assert!((v[1] - (1.0 - 0.4914) / 0.557).abs() < 1e-6);
    assert!((v[3] + 0.4822 / 0.549).abs() < 1e-6);
    assert_eq!(v[5], 0.0);
    assert!(normalize(&mut v, shape, &CIFAR_MEAN[..2], &CIFAR_STD).is_err());
}

#[test]
fn crop_with_padding_is_exact() {
    let shape = Planes::new(1, 3, 3);
    let v = ramp(shape); // 0 1 2 / 3 4 5 / 6 7 8
    assert_eq!(crop_padded(&v, shape, 1, 1, 1).unwrap(), v);
    assert_eq!(
        crop_padded(&v, shape, 1, 0, 0).unwrap(),
        vec![0., 0., 0., 0., 0., 1., 0., 3., 4.]
    );
    assert_eq!(
        crop_padded(&v, shape, 1, 2, 1).unwrap(),
        vec![3., 4., 5., 6., 7., 8., 0., 0., 0.]
    );
    assert!(crop_padded(&v, shape, 1, 3, 0).is_err());
    let mut rng = SplitMix64::new(1);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let c = random_crop(&v, shape, 1, &mut rng).unwrap();
        assert_eq!(c.len(), 9);
        seen.insert(c.iter().map(|x| *x as i32).collect::<Vec<_>>());
    }
    assert_eq!(seen.len(), 9, "all 9 offsets occur");
}

#[test]
fn flip_mirrors_rows_of_every_plane() {
    let shape = Planes::new(2, 2, 3);
    let mut v = ramp(shape);
    hflip(&mut v, shape).unwrap();
    assert_eq!(v, vec![2., 1., 0., 5., 4., 3., 8., 7., 6., 11., 10., 9.]);
    let mut rng = SplitMix64::new(3);
    let flips = (0..1000)
        .filter(|_| random_hflip(&mut v, shape, &mut rng).unwrap())
        .count();
    assert!((400..600).contains(&flips), "{flips}");
}

#[test]
fn random_erasing_sets_a_box_to_zero_with_the_given_probability() {
    let shape = Planes::new(3, 32, 32);
    let mut rng = SplitMix64::new(5);
    let mut erased = 0;
    for _ in 0..400 {
        let mut v = vec![1.0f32; shape.len()];
        if let Some((t, l, bh, bw)) = random_erasing(&mut v, shape, 0.25, &mut rng).unwrap() {
            erased += 1;
            let zeros = v.iter().filter(|&&x| x == 0.0).count();
            assert_eq!(zeros, 3 * bh * bw);
            assert_eq!(v[(32 + t) * 32 + l], 0.0);
            let area = (bh * bw) as f64 / 1024.0;
            assert!((0.01..0.36).contains(&area), "{area}");
        } else {
            assert!(v.iter().all(|&x| x == 1.0));
        }
    }
    assert!((60..140).contains(&erased), "{erased}");
}

#[test]
fn pipelines_keep_shapes_and_refuse_the_other_sample_type() {
    let mut rng = SplitMix64::new(13);
    let image: Vec<u8> = (0..3072).map(|i| (i % 251) as u8).collect();
    let shape = Planes::new(3, 32, 32);
    let resnet = Augmentation {
        crop_padding: 4,
        flip: true,
        ..Augmentation::NONE
    };
    let a = resnet
        .sample_pixels(&image, shape, &mut SplitMix64::new(1))
        .unwrap();
    let b = resnet
        .sample_pixels(&image, shape, &mut SplitMix64::new(1))
        .unwrap();
    assert_eq!(a.len(), 3072);
    assert_eq!(a, b);
    let eval = to_normalized(&image, shape, &CIFAR_RESNET_STD).unwrap();
    assert!((eval[1] - (1.0 / 255.0 - 0.4914) / 0.557).abs() < 1e-6);
    let transformer = Augmentation {
        flip: true,
        rand_augment: Some(RandAugment::cifar()),
        label_smoothing: 0.1,
        random_erasing: 0.25,
        ..Augmentation::NONE
    };
    // RandAugment needs pixels, SNNAugmentWide float planes
    assert!(
        transformer
            .sample_values(vec![0.0; 3072], shape, &mut rng)
            .is_err()
    );
    let events = Augmentation {
        flip: true,
        snn_augment_wide: true,
        ..Augmentation::NONE
    };
    assert!(events.sample_pixels(&image, shape, &mut rng).is_err());
    let frames_shape = Planes::new(2 * 3, 8, 8);
    let frames = events
        .sample_values(vec![1.0f32; frames_shape.len()], frames_shape, &mut rng)
        .unwrap();
    assert_eq!(frames.len(), frames_shape.len());
}

#[test]
fn steps_that_are_off_draw_nothing_and_change_nothing() {
    let shape = Planes::new(3, 8, 8);
    let values: Vec<f32> = (0..shape.len()).map(|i| i as f32).collect();
    let mut rng = SplitMix64::new(4);
    let same = Augmentation::NONE
        .sample_values(values.clone(), shape, &mut rng)
        .unwrap();
    assert_eq!(same, values);
    assert_eq!(rng.next_u64(), SplitMix64::new(4).next_u64());
}

#[test]
fn beta_half_half_has_mean_one_half_and_mass_at_the_ends() {
    let mut rng = SplitMix64::new(11);
    let xs: Vec<f64> = (0..20000).map(|_| beta(&mut rng, 0.5, 0.5)).collect();
    assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    assert!((mean - 0.5).abs() < 0.01, "{mean}");
    // Beta(0.5, 0.5) has variance 1/8 (arcsine law).
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
    assert!((var - 0.125).abs() < 0.005, "{var}");
}

fn image(seed: u64, shape: Planes) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    (0..shape.len())
        .map(|_| (rng.next_u64() % 256) as u8)
        .collect()
}

#[test]
fn rand_augment_is_deterministic_for_a_seed_and_keeps_the_shape() {
    let shape = Planes::new(3, 32, 32);
    let ra = RandAugment::cifar();
    assert_eq!(ra.fill, [125, 123, 114]);
    let mut changed = 0;
    for seed in 0..40 {
        let img = image(seed, shape);
        let (mut a, mut b) = (img.clone(), img.clone());
        ra.apply(&mut a, shape, &mut SplitMix64::new(seed)).unwrap();
        ra.apply(&mut b, shape, &mut SplitMix64::new(seed)).unwrap();
        assert_eq!(a, b);
        changed += usize::from(a != img);
    }
    // Each op is applied with p = 0.5 (and a few ops can be no-ops).
    assert!((10..35).contains(&changed), "{changed}");
    assert!(
        ra.apply(&mut [0u8; 5], shape, &mut SplitMix64::new(0))
            .is_err()
    );
}

#[test]
fn rand_augment_ops_on_hand_made_images() {
    let shape = Planes::new(1, 2, 2);
    let ra = RandAugment::cifar();
    let run = |op, px: [u8; 4], m: f64, neg: bool| {
        let mut v = px.to_vec();
        ra.apply_op(op, &mut v, shape, m, neg).unwrap();
        v
    };
    assert_eq!(
        run(RandOp::Invert, [0, 1, 254, 255], 9.0, false),
        [255, 254, 1, 0]
    );
    assert_eq!(
        run(RandOp::AutoContrast, [10, 20, 30, 10], 9.0, false),
        [0, 127, 255, 0]
    );
    // m = 9: keep 4 - int(3.6) = 1 bit.
    assert_eq!(
        run(RandOp::PosterizeIncreasing, [0, 127, 128, 255], 9.0, false),
        [0, 0, 128, 128]
    );
    // m = 5: threshold 256 - 128 = 128.
    assert_eq!(
        run(RandOp::SolarizeIncreasing, [0, 127, 128, 255], 5.0, false),
        [0, 127, 127, 0]
    );
    // m = 10: add 110 below 128.
    assert_eq!(
        run(RandOp::SolarizeAdd, [0, 127, 128, 200], 10.0, false),
        [110, 237, 128, 200]
    );
    // factor 1 + 0.45 = 1.45 against black.
    assert_eq!(
        run(RandOp::BrightnessIncreasing, [0, 10, 100, 200], 5.0, false),
        [0, 14, 145, 255]
    );
    assert_eq!(
        run(RandOp::BrightnessIncreasing, [0, 10, 100, 200], 5.0, true),
        [0, 5, 55, 110]
    );
    // Equalize: too few pixels (step = (4 - 2) / 255 = 0) leave the image unchanged...
    assert_eq!(
        run(RandOp::Equalize, [5, 5, 9, 9], 9.0, false),
        [5, 5, 9, 9]
    );
    // ...while 256 + 256 pixels give step 1 and map 100 to 256, clipped to 255.
    let big = Planes::new(1, 16, 32);
    let mut v: Vec<u8> = (0..512).map(|i| if i < 256 { 0 } else { 100 }).collect();
    ra.apply_op(RandOp::Equalize, &mut v, big, 9.0, false)
        .unwrap();
    assert!(v[..256].iter().all(|&x| x == 0) && v[256..].iter().all(|&x| x == 255));
    // Integer translation is an exact shift with the mean filled in.
    let shape3 = Planes::new(1, 1, 4);
    let mut v = vec![1u8, 2, 3, 4];
    // translate_pct 0.25 of width 4 at m = 10 is a 1-pixel shift.
    let one_px = RandAugment {
        translate_pct: 0.25,
        ..ra
    };
    one_px
        .apply_op(RandOp::TranslateXRel, &mut v, shape3, 10.0, false)
        .unwrap();
    assert_eq!(v, vec![2, 3, 4, 125]);
    // Rotation: magnitude 0 is the identity; a constant image stays constant inside and
    // takes the fill in the corners that the rotation uncovers.
    let shape8 = Planes::new(3, 8, 8);
    let img = image(3, shape8);
    let mut v = img.clone();
    ra.apply_op(RandOp::Rotate, &mut v, shape8, 0.0, false)
        .unwrap();
    assert_eq!(v, img);
    let mut v = vec![77u8; shape8.len()];
    ra.apply_op(RandOp::Rotate, &mut v, shape8, 10.0, false)
        .unwrap();
    assert_eq!(v[3 * 8 + 3], 77);
    assert_eq!(v[0], 125);
    assert_eq!(v[64], 123);
}

#[test]
fn wide_ops_translate_shear_rotate_and_cut_exactly() {
    let shape = Planes::new(2, 3, 3);
    let v = ramp(shape);
    let apply = |op| {
        let mut x = v.clone();
        apply_wide_op(&mut x, shape, op).unwrap();
        x
    };
    assert_eq!(apply(WideOp::Identity), v);
    assert_eq!(
        apply(WideOp::TranslateX(1))[..9],
        [0., 0., 1., 0., 3., 4., 0., 6., 7.]
    );
    assert_eq!(
        apply(WideOp::TranslateY(-1))[9..],
        [12., 13., 14., 15., 16., 17., 0., 0., 0.]
    );
    // 90 degrees maps the ramp's rows to columns (on every plane alike).
    let r = apply(WideOp::Rotate(90.0));
    assert_eq!(r[..9], [2., 5., 8., 1., 4., 7., 0., 3., 6.]);
    assert_eq!(r[9..], [11., 14., 17., 10., 13., 16., 9., 12., 15.]);
    // Shear m: the row at centred y reads x + tan(m) y. tan(0.3) = 0.31 rounds back to x.
    assert_eq!(apply(WideOp::ShearX(0.3)), v);
    // tan(1) = 1.56: the top row reads x - 1.56, the bottom row x + 1.56.
    let s = apply(WideOp::ShearX(1.0));
    assert_eq!(s[..9], [0., 0., 0., 3., 4., 5., 8., 0., 0.]);
    let c = apply(WideOp::Cutout(Some((1, 0, 2))));
    assert_eq!(c[..9], [0., 1., 2., 0., 0., 5., 0., 0., 8.]);
    assert_eq!(c[9 + 3], 0.0);
}

#[test]
fn snn_augment_wide_is_deterministic_and_draws_every_op() {
    let shape = Planes::new(4, 16, 16);
    let v: Vec<f32> = (0..shape.len()).map(|i| (i % 7) as f32).collect();
    let mut kinds = std::collections::HashSet::new();
    for seed in 0..200 {
        let (mut a, mut b) = (v.clone(), v.clone());
        let oa = snn_augment_wide(&mut a, shape, &mut SplitMix64::new(seed)).unwrap();
        let ob = snn_augment_wide(&mut b, shape, &mut SplitMix64::new(seed)).unwrap();
        assert_eq!((oa, &a), (ob, &b));
        kinds.insert(std::mem::discriminant(&oa));
        match oa {
            WideOp::TranslateX(t) | WideOp::TranslateY(t) => assert!(t.abs() <= 5),
            WideOp::ShearX(s) => assert!(s.abs() <= 0.3 + 1e-12),
            WideOp::Rotate(d) => assert!(d.abs() <= 30.0 + 1e-9),
            WideOp::Cutout(Some((_, _, side))) => assert!((1..=6).contains(&side)),
            _ => {}
        }
    }
    assert_eq!(kinds.len(), 6);
}
