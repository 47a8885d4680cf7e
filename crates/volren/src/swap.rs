//! Binary-swap compositing: the plan, and an in-process execution of it.
//!
//! **Non-power-of-two rank counts** are handled by *folding along the kd tree*. With
//! `2^m ≤ p < 2^(m+1)`, the brick-count tree of [`crate::bricks`] (a node of `c` bricks splits
//! into `floor(c/2)` and the rest) has, at depth `m`, exactly `2^m` nodes holding one or two
//! bricks each. Each such node is a *group*; in a two-brick group the second rank first
//! sends its whole partial image to the first (the *leader*) and drops out. The `2^m` leaders
//! then run classic binary swap: in round `j` leaders whose group index differs in bit `j`
//! (bit 0 first, i.e. kd siblings first) split their common region in half along its longer
//! side, the lower group keeping the first half. Because every merge joins two kd subtrees,
//! the two image sets being merged are always contiguous in visibility order, for every
//! camera, so `front over back` stays exact. At the end each leader owns one rectangle; the
//! leaders' rectangles partition the image, and a final gather sends them to rank 0.
//!
//! Only the part of a half that holds data (its intersection with the sender's bounding
//! rectangle of non-empty pixels) is sent, at 16 bytes per pixel (f32 RGBA).

use serde::{Deserialize, Serialize};

use crate::error::{Result, VolrenError};
use crate::image::{over, Image, PartialImage, Rect, Rgba};

/// A rank that sends its whole partial image to its group leader before the swap rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fold {
    /// The rank that drops out.
    pub from: usize,
    /// Its group leader, which composites the received image.
    pub to: usize,
}

/// One pairwise exchange of a swap round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchange {
    /// Rank that keeps the first half of the common region (see [`split_region`]).
    pub low: usize,
    /// Rank that keeps the second half.
    pub high: usize,
}

/// A binary-swap schedule for `ranks` ranks holding the bricks of `bricks(dims, ranks)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Number of ranks.
    pub ranks: usize,
    /// The `2^m` groups in kd (depth-first) order, one or two ranks each, leader first.
    pub groups: Vec<Vec<usize>>,
    /// The folds done before the rounds (one per two-rank group).
    pub folds: Vec<Fold>,
    /// `m` rounds of exchanges between leaders.
    pub rounds: Vec<Vec<Exchange>>,
}

/// Splits a region in two along its longer side (x on ties); the first half gets the
/// smaller half when the length is odd. A 1-pixel-wide side yields an empty first half.
pub fn split_region(r: Rect) -> (Rect, Rect) {
    if r.width() >= r.height() {
        let mid = r.x0 + r.width() / 2;
        (Rect { x1: mid, ..r }, Rect { x0: mid, ..r })
    } else {
        let mid = r.y0 + r.height() / 2;
        (Rect { y1: mid, ..r }, Rect { y0: mid, ..r })
    }
}

fn make_groups(first: usize, count: usize, depth_left: u32, out: &mut Vec<Vec<usize>>) {
    if depth_left == 0 {
        out.push((first..first + count).collect());
        return;
    }
    let lo = count / 2;
    make_groups(first, lo, depth_left - 1, out);
    make_groups(first + lo, count - lo, depth_left - 1, out);
}

/// The binary-swap plan for `p` ranks (`p` = 0 is treated as 1).
pub fn binary_swap_plan(p: usize) -> Plan {
    let p = p.max(1);
    let m = usize::BITS - 1 - p.leading_zeros(); // floor(log2 p)
    let mut groups = Vec::new();
    make_groups(0, p, m, &mut groups);
    let folds = groups
        .iter()
        .filter(|g| g.len() == 2)
        .map(|g| Fold {
            from: g[1],
            to: g[0],
        })
        .collect();
    let rounds = (0..m)
        .map(|j| {
            (0..groups.len())
                .filter(|g| g >> j & 1 == 0)
                .map(|g| Exchange {
                    low: groups[g][0],
                    high: groups[g | 1 << j][0],
                })
                .collect()
        })
        .collect();
    Plan {
        ranks: p,
        groups,
        folds,
        rounds,
    }
}

impl Plan {
    /// The rank leading each group, in group order.
    pub fn leaders(&self) -> Vec<usize> {
        self.groups.iter().map(|g| g[0]).collect()
    }

    /// The region each rank owns after the last round, for a `width x height` image
    /// (empty for ranks that folded).
    pub fn final_regions(&self, width: u32, height: u32) -> Vec<Rect> {
        let mut region = vec![Rect::default(); self.ranks];
        for g in &self.groups {
            region[g[0]] = Rect::full(width, height);
        }
        for round in &self.rounds {
            for e in round {
                let (a, b) = split_region(region[e.low]);
                region[e.low] = a;
                region[e.high] = b;
            }
        }
        region
    }
}

/// A simulated rank: full-frame buffer, bounding rect of its data, and the ranks merged in.
struct RankState {
    img: Vec<Rgba>,
    bbox: Rect,
    members: Vec<usize>,
}

/// Executes [`binary_swap_plan`]`(partials.len())` in-process. `partials[r]` is rank `r`'s
/// partial image, rendered from brick `r` of `bricks(dims, partials.len())`; `order` is the
/// visibility order ([`crate::visibility_order`]). Returns the final image (gathered on rank
/// 0) and the bytes each rank received (swaps, folds and the final gather).
///
/// Fails when the inputs do not fit together: sizes differ, `order` is not a permutation,
/// or `order` is not contiguous on the plan's kd groups (bricks not from `bricks()`).
pub fn binary_swap_simulate(
    partials: &[PartialImage],
    order: &[usize],
    width: u32,
    height: u32,
) -> Result<(Image, Vec<u64>)> {
    let p = partials.len();
    if p == 0 {
        return Err(VolrenError::InvalidArgument("no partial images".into()));
    }
    let mut pos = vec![usize::MAX; p];
    for (i, &r) in order.iter().enumerate() {
        if r >= p || pos[r] != usize::MAX {
            return Err(VolrenError::InvalidArgument(format!(
                "order {order:?} is not a permutation of 0..{p}"
            )));
        }
        pos[r] = i;
    }
    if order.len() != p {
        return Err(VolrenError::InvalidArgument(format!(
            "order has {} entries for {p} partials",
            order.len()
        )));
    }
    let full = Rect::full(width, height);
    let npx = width as usize * height as usize;
    let mut st: Vec<RankState> = partials
        .iter()
        .enumerate()
        .map(|(r, part)| {
            let mut img = vec![[0.0; 4]; npx];
            let bbox = part.rect.intersect(&full);
            for y in bbox.y0..bbox.y1 {
                for x in bbox.x0..bbox.x1 {
                    img[y as usize * width as usize + x as usize] = part.get(x, y);
                }
            }
            RankState {
                img,
                bbox,
                members: vec![r],
            }
        })
        .collect();
    let mut bytes = vec![0u64; p];
    let plan = binary_swap_plan(p);

    // Receives `rect` of `from`'s buffer into `to`, compositing in visibility order.
    let mut transfer =
        |st: &mut Vec<RankState>, from: usize, to: usize, rect: Rect| -> Result<()> {
            let span = |m: &[usize]| {
                let it = m.iter().map(|&r| pos[r]);
                (it.clone().min().unwrap_or(0), it.max().unwrap_or(0))
            };
            let (fa, fb) = span(&st[from].members);
            let (ta, tb) = span(&st[to].members);
            if !(fb < ta || tb < fa) || fb - fa + 1 != st[from].members.len() {
                return Err(VolrenError::InvalidArgument(format!(
                    "visibility order {order:?} is not contiguous on the kd groups of the plan"
                )));
            }
            let sender_in_front = fb < ta;
            let (src, dst) = if from < to {
                let (a, b) = st.split_at_mut(to);
                (&a[from], &mut b[0])
            } else {
                let (a, b) = st.split_at_mut(from);
                (&b[0], &mut a[to])
            };
            for y in rect.y0..rect.y1 {
                let row = y as usize * width as usize;
                for x in rect.x0..rect.x1 {
                    let i = row + x as usize;
                    dst.img[i] = if sender_in_front {
                        over(src.img[i], dst.img[i])
                    } else {
                        over(dst.img[i], src.img[i])
                    };
                }
            }
            bytes[to] += rect.area() as u64 * 16;
            Ok(())
        };

    for f in &plan.folds {
        let rect = st[f.from].bbox;
        transfer(&mut st, f.from, f.to, rect)?;
        st[f.to].bbox = st[f.to].bbox.union(&rect);
        let moved = std::mem::take(&mut st[f.from].members);
        st[f.to].members.extend(moved);
        st[f.from].bbox = Rect::default();
    }
    let mut region = vec![Rect::default(); p];
    for l in plan.leaders() {
        region[l] = full;
    }
    for round in &plan.rounds {
        for e in round {
            let (keep_low, keep_high) = split_region(region[e.low]);
            let to_high = st[e.low].bbox.intersect(&keep_high);
            let to_low = st[e.high].bbox.intersect(&keep_low);
            transfer(&mut st, e.low, e.high, to_high)?;
            transfer(&mut st, e.high, e.low, to_low)?;
            let low_bbox = st[e.low].bbox.intersect(&keep_low).union(&to_low);
            let high_bbox = st[e.high].bbox.intersect(&keep_high).union(&to_high);
            st[e.low].bbox = low_bbox;
            st[e.high].bbox = high_bbox;
            let (ml, mh) = (st[e.low].members.clone(), st[e.high].members.clone());
            st[e.low].members.extend(mh);
            st[e.high].members.extend(ml);
            region[e.low] = keep_low;
            region[e.high] = keep_high;
        }
    }
    // Gather on rank 0 (always the first leader).
    let mut out = Image::transparent(width, height);
    for l in plan.leaders() {
        let rect = region[l];
        for y in rect.y0..rect.y1 {
            let row = y as usize * width as usize;
            for x in rect.x0..rect.x1 {
                out.pixels[row + x as usize] = st[l].img[row + x as usize];
            }
        }
        if l != 0 {
            bytes[0] += st[l].bbox.intersect(&rect).area() as u64 * 16;
        }
    }
    Ok((out, bytes))
}
