use super::splitter::push_zero;
use super::*;
use fastcdc::v2020;
use volback_testkit::testdata::pseudo_random;

fn split_all(params: ChunkerParams, input: &[Input]) -> Vec<Piece> {
    split_with(Splitter::new(params), input)
}

fn split_with(s: Splitter, input: &[Input]) -> Vec<Piece> {
    split_counting(s, input).0
}

/// The pieces, and how many chunks the guide gave.
fn split_counting(mut s: Splitter, input: &[Input]) -> (Vec<Piece>, u64) {
    let mut out = Vec::new();
    for i in input {
        match i {
            Input::Data(d) => s.push_data(Bytes::copy_from_slice(d), &mut out),
            Input::Hole(n) => s.push_hole(*n, &mut out),
        }
    }
    s.finish(&mut out);
    // Merge adjacent zero pieces as the pipeline does.
    let mut merged: Vec<Piece> = Vec::new();
    for p in out {
        match p {
            Piece::Zero(n) => push_zero(&mut merged, n),
            d => merged.push(d),
        }
    }
    (merged, s.followed())
}

enum Input {
    Data(Vec<u8>),
    Hole(u64),
}

fn lens(pieces: &[Piece]) -> Vec<(bool, u64)> {
    pieces
        .iter()
        .map(|p| (matches!(p, Piece::Zero(_)), p.len()))
        .collect()
}

fn concat(pieces: &[Piece]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in pieces {
        match p {
            Piece::Zero(n) => v.resize(v.len() + *n as usize, 0),
            Piece::Data(b) | Piece::Hashed(b, _) => v.extend_from_slice(b),
            Piece::Reused(..) => unreachable!("the splitter reads everything"),
        }
    }
    v
}

/// Splits `data` fed in pieces of the given sizes (cycled).
fn split_in_pieces(params: ChunkerParams, data: &[u8], sizes: &[usize]) -> Vec<Piece> {
    let mut input = Vec::new();
    let mut pos = 0;
    let mut k = 0;
    while pos < data.len() {
        let n = sizes[k % sizes.len()].min(data.len() - pos);
        input.push(Input::Data(data[pos..pos + n].to_vec()));
        pos += n;
        k += 1;
    }
    split_all(params, &input)
}

/// Golden cut points: FastCDC v2020 with the default parameters over a fixed pseudo-random
/// megabyte. If this fails after a dependency update, cut points changed and existing
/// containers would stop deduplicating against new backups: pin the old version instead.
#[test]
fn golden_cut_points() {
    let data = pseudo_random(1 << 20, 42);
    let pieces = split_in_pieces(ChunkerParams::default(), &data, &[1 << 20]);
    let got: Vec<u64> = pieces.iter().map(|p| p.len()).collect();
    assert_eq!(got, GOLDEN.to_vec());
    // And they are exactly the crate's own one-shot FastCDC cut points.
    let p = ChunkerParams::default();
    let oneshot: Vec<u64> =
        v2020::FastCDC::new(&data, p.min as usize, p.avg as usize, p.max as usize)
            .map(|c| c.length as u64)
            .collect();
    assert_eq!(got, oneshot);
}

const GOLDEN: &[u64] = &[
    57836, 103300, 37377, 24139, 35857, 46157, 53036, 32054, 19883, 45208, 49404, 55341, 40205,
    30034, 35581, 11366, 43889, 43214, 8497, 34473, 43108, 55242, 41020, 32808, 36468, 33079,
];

#[test]
fn buffering_never_changes_cut_points() {
    let mut data = pseudo_random(3 << 20, 7);
    // Zero runs of various lengths and alignments inside the data.
    for (start, len) in [
        (100_000, 40_000),
        (500_000, 8192),
        (1_000_003, 200_000),
        (2_000_000, 4096),
    ] {
        data[start..start + len].fill(0);
    }
    data[3_000_000..].fill(0);
    let p = ChunkerParams::default();
    let reference = split_in_pieces(p, &data, &[data.len()]);
    assert_eq!(concat(&reference), data);
    for sizes in [
        vec![4096],
        vec![1000, 1, 3, 5000],
        vec![65536, 12345],
        vec![1 << 20],
        vec![131072, 7, 4096 * 3 + 1],
    ] {
        let got = split_in_pieces(p, &data, &sizes);
        assert_eq!(lens(&got), lens(&reference), "pieces {sizes:?}");
        assert_eq!(got, reference);
    }
}

/// Cutting a buffer on several threads gives exactly the sequential cut points, whether
/// the parts' chains join the true one at once, late, or never (periodic data whose cuts
/// all fall at the maximum size, offset from the parts' starts).
#[test]
fn parallel_cutting_matches_sequential() {
    let p = ChunkerParams {
        min: 256,
        avg: 1024,
        max: 4096,
        zero_min: 8192,
    };
    let random = pseudo_random(300_000, 5);
    let constant = vec![7u8; 300_000];
    let mut mixed = pseudo_random(300_000, 6);
    mixed[50_000..170_000].fill(9);
    let periodic: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let cut_all = |c: &mut Cdc, data: &[u8], feeds: &[usize]| -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut at = 0;
        for &n in feeds.iter().chain(std::iter::once(&data.len())) {
            let end = n.min(data.len());
            if end > at {
                c.feed(Bytes::copy_from_slice(&data[at..end]), |b| out.push(b));
                at = end;
            }
        }
        c.end_region(|b| out.push(b));
        out
    };
    for data in [&random, &constant, &mixed, &periodic] {
        let mut seq = Cdc::new(&p);
        seq.threads = 1;
        let want = cut_all(&mut seq, data, &[]);
        assert!(want.len() > 50);
        for (threads, segment) in [(2, 8192), (3, 10_000), (4, 50_000), (7, 4096), (2, 1 << 20)] {
            for feeds in [vec![], vec![1000], vec![123_457, 200_000]] {
                let mut c = Cdc::new(&p);
                c.threads = threads;
                c.par_segment = segment;
                let got = cut_all(&mut c, data, &feeds);
                assert!(
                    got == want,
                    "{threads} threads, segments of {segment}, feeds {feeds:?}"
                );
            }
        }
    }
}

#[test]
fn long_zero_runs_become_zero_extents_and_short_ones_stay_data() {
    let p = ChunkerParams::default();
    let mut data = pseudo_random(1 << 20, 9);
    data[65536..65536 + 4 * 4096].fill(0); // 16 KiB: too short
    data[262144..262144 + 64 * 1024].fill(0); // 64 KiB aligned: a zero extent
    let pieces = split_in_pieces(p, &data, &[100_000]);
    assert_eq!(concat(&pieces), data);
    let zeros: Vec<u64> = pieces
        .iter()
        .filter_map(|p| {
            if let Piece::Zero(n) = p {
                Some(*n)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(zeros, vec![64 * 1024]);
    for piece in &pieces {
        assert!(piece.len() <= u64::from(p.max));
    }
}

#[test]
fn holes_join_adjacent_zero_data() {
    let p = ChunkerParams::default();
    let a = pseudo_random(50_000, 1);
    let mut first = a.clone();
    first.resize(53_248 + 8192, 0); // ends with zero blocks
    let input = vec![
        Input::Data(first.clone()),
        Input::Hole(1 << 20),
        Input::Data(vec![0; 8192]),
        Input::Data(pseudo_random(30_000, 2)),
    ];
    let pieces = split_all(p, &input);
    let zero_total: u64 = pieces
        .iter()
        .filter_map(|p| {
            if let Piece::Zero(n) = p {
                Some(*n)
            } else {
                None
            }
        })
        .sum();
    // 50,000 rounds up to block 53,248; the rest of the first buffer, the hole and the next
    // 8 KiB are one run.
    assert_eq!(zero_total, 8192 + (1 << 20) + 8192);
    assert_eq!(
        pieces
            .iter()
            .filter(|p| matches!(p, Piece::Zero(_)))
            .count(),
        1
    );
    let total: u64 = pieces.iter().map(|p| p.len()).sum();
    assert_eq!(total, first.len() as u64 + (1 << 20) + 8192 + 30_000);
}

#[test]
fn short_run_across_a_hole_is_data() {
    let p = ChunkerParams::default();
    let input = vec![
        Input::Data(pseudo_random(4096, 3)),
        Input::Hole(4096),
        Input::Data(pseudo_random(4096, 4)),
    ];
    let pieces = split_all(p, &input);
    assert!(pieces.iter().all(|p| matches!(p, Piece::Data(_))));
    let mut expect = pseudo_random(4096, 3);
    expect.extend_from_slice(&[0; 4096]);
    expect.extend_from_slice(&pseudo_random(4096, 4));
    assert_eq!(concat(&pieces), expect);
}

#[test]
fn all_zero_and_empty_volumes() {
    let p = ChunkerParams::default();
    assert!(split_all(p, &[]).is_empty());
    let pieces = split_all(p, &[Input::Data(vec![0; 10_000_000])]);
    assert_eq!(pieces, vec![Piece::Zero(10_000_000)]);
    // Too short for a zero run, but an all-zero chunk is stored as a zero extent anyway.
    let pieces = split_all(p, &[Input::Data(vec![0; 5000])]);
    assert_eq!(pieces, vec![Piece::Zero(5000)]);
}

/// Cuts `new` guided by the chunks of `parent` (fed in buffers of `sizes`), and checks the
/// pieces against cutting `new` without a guide: the same pieces, with the guided ones' ids
/// right. Returns how many chunks the guide recognised.
fn guided_matches_unguided(
    params: ChunkerParams,
    parent: &[Input],
    new: &[u8],
    sizes: &[usize],
) -> usize {
    let mut filter = GuideFilter::default();
    let mut entries = Vec::new();
    let mut offset = 0;
    for p in split_all(params, parent) {
        let data = match &p {
            Piece::Data(b) => Some((b.len() as u32, Hash::of(b))),
            Piece::Zero(_) => None,
            Piece::Hashed(..) | Piece::Reused(..) => unreachable!("unguided"),
        };
        entries.extend(filter.next(offset, data));
        offset += p.len();
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(entries.len().div_ceil(3) + 1);
    for batch in entries.chunks(3) {
        tx.send(batch.to_vec()).unwrap();
    }
    drop(tx);
    let mut input = Vec::new();
    let (mut pos, mut k) = (0, 0);
    while pos < new.len() {
        let n = sizes[k % sizes.len()].min(new.len() - pos);
        input.push(Input::Data(new[pos..pos + n].to_vec()));
        pos += n;
        k += 1;
    }
    let (guided, followed) = split_counting(
        Splitter::with_guide(params, Guide::new(rx, crate::ids::ChunkIds::PLAIN)),
        &input,
    );
    let plain = split_all(params, &input);
    let unguided: Vec<Piece> = guided
        .iter()
        .map(|p| match p {
            Piece::Hashed(b, id) => {
                assert_eq!(*id, Hash::of(b));
                Piece::Data(b.clone())
            }
            p => p.clone(),
        })
        .collect();
    assert_eq!(lens(&unguided), lens(&plain));
    assert!(unguided == plain);
    // The guide was consulted, not just harmless: every chunk that the parent had at the same
    // offset with the same bytes, and that ends at a FastCDC cut (data follows it), is taken
    // from the guide without a scan.
    let mut at = 0u64;
    let mut in_place = 0;
    for (k, p) in plain.iter().enumerate() {
        if let Piece::Data(b) = p
            && matches!(plain.get(k + 1), Some(Piece::Data(_)))
        {
            let e = GuideEntry {
                offset: at,
                len: b.len() as u32,
                id: Hash::of(b),
            };
            in_place += usize::from(entries.contains(&e));
        }
        at += p.len();
    }
    assert!(
        followed as usize >= in_place,
        "the guide gave {followed} chunks; {in_place} parent chunks were still in place"
    );
    followed as usize
}

fn small_params() -> ChunkerParams {
    ChunkerParams {
        min: 1024,
        avg: 4096,
        max: 16384,
        zero_min: 8192,
    }
}

/// The guide's cut check agrees with FastCDC: the first position where it says "cut" is
/// where the crate cuts, for many inputs and both parameter sets.
#[test]
fn cut_rule_agrees_with_fastcdc() {
    for p in [small_params(), ChunkerParams::default()] {
        let cdc = Cdc::new(&p);
        let rule = cdc.rule();
        for seed in 0..200 {
            let src = pseudo_random(p.max as usize + 1, 1000 + seed);
            let want = cdc.cut(&src);
            let got = (rule.min..=rule.max)
                .find(|&n| rule.cuts_at(&src, n) == Some(true))
                .unwrap();
            assert_eq!(got, want, "seed {seed}, avg {}", p.avg);
        }
    }
}

/// A parent chunk whose bytes come back unchanged but followed by a different byte is not
/// taken as a cut when FastCDC would not cut there: the cut depends on that byte too.
#[test]
fn a_changed_next_byte_is_no_guide() {
    let p = small_params();
    let rule = Cdc::new(&p).rule();
    let parent = pseudo_random(200_000, 21);
    let cuts: Vec<usize> = split_all(p, &[Input::Data(parent.clone())])
        .iter()
        .scan(0, |at, c| {
            *at += c.len() as usize;
            Some(*at)
        })
        .collect();
    // A byte right after a cut such that, changed, FastCDC no longer cuts there.
    let (at, byte) = cuts[..cuts.len() - 1]
        .iter()
        .find_map(|&c| {
            let start = cuts.iter().rev().find(|&&x| x < c).copied().unwrap_or(0);
            (0..=255u8)
                .find(|&b| {
                    let mut v = parent[start..=c].to_vec();
                    v[c - start] = b;
                    rule.cuts_at(&v, c - start) == Some(false)
                })
                .map(|b| (c, b))
        })
        .unwrap();
    let new = {
        let mut n = parent.clone();
        n[at] = byte;
        n
    };
    for sizes in [&[1][..], &[7000], &[1 << 20]] {
        guided_matches_unguided(p, &[Input::Data(parent.clone())], &new, sizes);
    }
}

/// An unchanged volume is recognised chunk by chunk, except each region's last chunk.
#[test]
fn guide_recognises_an_unchanged_volume() {
    let p = small_params();
    let mut data = pseudo_random(300_000, 7);
    data[100_000..120_000].fill(0); // two regions
    let parent = [Input::Data(data.clone())];
    let plain = split_all(p, &parent);
    let data_chunks = plain.iter().filter(|p| matches!(p, Piece::Data(_))).count();
    for sizes in [&[1 << 20][..], &[4096, 10_000, 333]] {
        let seen = guided_matches_unguided(p, &parent, &data, sizes);
        assert_eq!(seen, data_chunks - 2, "buffers {sizes:?}");
    }
}

/// A region's last chunk is no guide: here the zero run that ended the parent's first region
/// is data now, so the region goes on and FastCDC cuts elsewhere.
#[test]
fn a_region_end_is_no_guide() {
    let p = small_params();
    let mut data = pseudo_random(200_000, 9);
    // Whole aligned blocks, so the zero run is exactly these bytes and the region's last
    // chunk ends at 53,248 with the same bytes in both.
    data[53_248..73_728].fill(0);
    let parent = [Input::Data(data.clone())];
    data[53_248..73_728].copy_from_slice(&pseudo_random(20_480, 10));
    let seen = guided_matches_unguided(p, &parent, &data, &[7000]);
    assert!(seen > 0);
}

/// Data that moved (by amounts that are not whole blocks, forwards and backwards) is
/// followed from its first recognised chunk on.
#[test]
fn guide_follows_moved_data() {
    let p = small_params();
    let parent = pseudo_random(400_000, 11);
    let chunks = split_all(p, &[Input::Data(parent.clone())]).len();
    let mut ahead = pseudo_random(10_001, 12);
    ahead.extend_from_slice(&parent);
    let behind = parent[30_003..].to_vec();
    let mut swapped = parent[200_000..].to_vec();
    swapped.extend_from_slice(&parent[..200_000]);
    for (name, new) in [("ahead", ahead), ("behind", behind), ("swapped", swapped)] {
        let followed = guided_matches_unguided(p, &[Input::Data(parent.clone())], &new, &[50_000]);
        assert!(
            followed * 10 >= chunks * 8,
            "{name}: {followed} of {chunks}"
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Whatever changed (bytes overwritten, inserted, deleted, zeroed, or a hole), guided
    /// cutting gives exactly the pieces of unguided cutting, whatever the buffer sizes.
    #[test]
    fn guided_cutting_is_cutting(
        seed in 0u64..1000,
        edits in proptest::collection::vec((0usize..400_000, 0u8..4, 1usize..30_000), 0..6),
        hole in proptest::option::of((0u64..90, 1u64..8)),
        sizes in proptest::collection::vec(1usize..70_000, 1..4),
    ) {
        let p = small_params();
        let parent = pseudo_random(400_000, seed);
        let mut new = parent.clone();
        for (at, kind, len) in edits {
            let at = at.min(new.len());
            let end = (at + len).min(new.len());
            match kind {
                0 => new[at..end].copy_from_slice(&pseudo_random(end - at, seed + 1)),
                1 => { new.splice(at..at, pseudo_random(len, seed + 2)); }
                2 => { new.drain(at..end); }
                _ => new[at..end].fill(0),
            }
        }
        let parent_input = match hole {
            // The parent had a hole where `new` has data.
            Some((at, n)) => {
                let (a, n) = ((at * 4096) as usize, (n * 4096) as usize);
                let a = a.min(parent.len());
                let n = n.min(parent.len() - a);
                vec![
                    Input::Data(parent[..a].to_vec()),
                    Input::Hole(n as u64),
                    Input::Data(parent[a + n..].to_vec()),
                ]
            }
            None => vec![Input::Data(parent.clone())],
        };
        guided_matches_unguided(p, &parent_input, &new, &sizes);
    }
}

#[test]
fn defaults_are_valid() {
    ChunkerParams::default().validate().unwrap();
    assert!(
        ChunkerParams {
            min: 3,
            ..Default::default()
        }
        .validate()
        .is_err()
    );
}
