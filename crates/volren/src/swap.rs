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

/// One transfer of a binary-swap step: rank `from` sends the pixels of its image inside
/// `region` (cut to the bounding rectangle of its data) to rank `to`, which composites them
/// with its own: `received over own` when `sender_in_front`, else `own over received`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Sending rank.
    pub from: usize,
    /// Receiving rank.
    pub to: usize,
    /// Image region sent (before cutting it to the sender's data).
    pub region: Rect,
    /// Whether the sender's bricks are in front of the receiver's for the schedule's order.
    pub sender_in_front: bool,
}

/// One step of a [`Schedule`]: the folds, or one round of pairwise exchanges. The transfers of
/// a step are independent: every sender reads its image as it was before the step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The transfers, each to a different receiver.
    pub transfers: Vec<Transfer>,
    /// The image region each rank is responsible for after the step (empty for a rank that
    /// folded).
    pub regions: Vec<Rect>,
}

/// A [`binary_swap_plan`] turned into data movements for one camera: the steps (the folds
/// first when there are any, then one step per round), with who sends what to whom and in
/// which compositing order. Every rank starts responsible for the whole image; at the end
/// the non-empty [`Schedule::final_regions`] partition it, and rank 0's region is never
/// empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Number of ranks.
    pub ranks: usize,
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// The steps, in execution order.
    pub steps: Vec<Step>,
}

impl Schedule {
    /// The region `rank` is responsible for before step `step` (`step == steps.len()`: at
    /// the end).
    pub fn region_before(&self, rank: usize, step: usize) -> Rect {
        match step.checked_sub(1).and_then(|s| self.steps.get(s)) {
            Some(prev) => prev.regions.get(rank).copied().unwrap_or_default(),
            None => Rect::full(self.width, self.height),
        }
    }

    /// The region each rank holds at the end (empty for ranks that folded).
    pub fn final_regions(&self) -> Vec<Rect> {
        (0..self.ranks)
            .map(|r| self.region_before(r, self.steps.len()))
            .collect()
    }

    /// The transfer `rank` receives in `step`, if any.
    pub fn received_by(&self, rank: usize, step: usize) -> Option<&Transfer> {
        self.steps
            .get(step)?
            .transfers
            .iter()
            .find(|t| t.to == rank)
    }

    /// The transfer `rank` sends in `step`, if any.
    pub fn sent_by(&self, rank: usize, step: usize) -> Option<&Transfer> {
        self.steps
            .get(step)?
            .transfers
            .iter()
            .find(|t| t.from == rank)
    }

    /// The next step after `after` (`None`: from the start) in which `rank` sends, provided it
    /// receives nothing before that: the step whose data `rank` can prepare as soon as its
    /// work up to `after` is done.
    pub fn next_send(&self, rank: usize, after: Option<usize>) -> Option<(usize, &Transfer)> {
        let first = after.map_or(0, |s| s + 1);
        for step in first..self.steps.len() {
            if let Some(t) = self.sent_by(rank, step) {
                return Some((step, t));
            }
            if self.received_by(rank, step).is_some() {
                return None;
            }
        }
        None
    }
}

/// The binary-swap [`Schedule`] for `order.len()` ranks holding the bricks of
/// `bricks(dims, order.len())` (rank `r` holds brick `r`), `order` being their visibility
/// order ([`crate::visibility_order`]), for a `width x height` image.
///
/// Fails when `order` is not a permutation of the ranks, or is not contiguous on the plan's
/// kd groups (bricks not from [`crate::bricks`]).
pub fn binary_swap_schedule(order: &[usize], width: u32, height: u32) -> Result<Schedule> {
    let p = order.len();
    if p == 0 {
        return Err(VolrenError::InvalidArgument("no ranks".into()));
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
    let plan = binary_swap_plan(p);
    let full = Rect::full(width, height);
    let mut members: Vec<Vec<usize>> = (0..p).map(|r| vec![r]).collect();
    // Whether `from`'s bricks lie in front of `to`'s; both sets must be contiguous runs of
    // the visibility order.
    let in_front = |members: &[Vec<usize>], from: usize, to: usize| -> Result<bool> {
        let span = |m: &[usize]| {
            let it = m.iter().map(|&r| pos[r]);
            (it.clone().min().unwrap_or(0), it.max().unwrap_or(0))
        };
        let (fa, fb) = span(&members[from]);
        let (ta, tb) = span(&members[to]);
        let contiguous = fb - fa + 1 == members[from].len() && tb - ta + 1 == members[to].len();
        if !contiguous || !(fb < ta || tb < fa) {
            return Err(VolrenError::InvalidArgument(format!(
                "visibility order {order:?} is not contiguous on the kd groups of the plan"
            )));
        }
        Ok(fb < ta)
    };
    let mut region = vec![full; p];
    let mut steps = Vec::new();
    if !plan.folds.is_empty() {
        let mut transfers = Vec::new();
        for f in &plan.folds {
            transfers.push(Transfer {
                from: f.from,
                to: f.to,
                region: full,
                sender_in_front: in_front(&members, f.from, f.to)?,
            });
            let moved = std::mem::take(&mut members[f.from]);
            members[f.to].extend(moved);
            region[f.from] = Rect::default();
        }
        steps.push(Step {
            transfers,
            regions: region.clone(),
        });
    }
    for round in &plan.rounds {
        let mut transfers = Vec::new();
        for e in round {
            let (keep_low, keep_high) = split_region(region[e.low]);
            let high_in_front = in_front(&members, e.high, e.low)?;
            transfers.push(Transfer {
                from: e.low,
                to: e.high,
                region: keep_high,
                sender_in_front: !high_in_front,
            });
            transfers.push(Transfer {
                from: e.high,
                to: e.low,
                region: keep_low,
                sender_in_front: high_in_front,
            });
            region[e.low] = keep_low;
            region[e.high] = keep_high;
        }
        for e in round {
            let (ml, mh) = (members[e.low].clone(), members[e.high].clone());
            members[e.low].extend(mh);
            members[e.high].extend(ml);
        }
        steps.push(Step {
            transfers,
            regions: region.clone(),
        });
    }
    Ok(Schedule {
        ranks: p,
        width,
        height,
        steps,
    })
}

/// Composites `src`'s pixels inside `rect` into `dst` (both full-frame, row-major, `width`
/// wide): `src over dst` when `src_in_front`, else `dst over src`.
pub(crate) fn composite_rect(
    dst: &mut [Rgba],
    src: &[Rgba],
    width: u32,
    rect: Rect,
    src_in_front: bool,
) {
    for y in rect.y0..rect.y1 {
        let row = y as usize * width as usize;
        let (a, b) = (row + rect.x0 as usize, row + rect.x1 as usize);
        for (d, s) in dst[a..b].iter_mut().zip(&src[a..b]) {
            *d = if src_in_front {
                over(*s, *d)
            } else {
                over(*d, *s)
            };
        }
    }
}

/// Executes the binary-swap [`Schedule`] in-process. `partials[r]` is rank `r`'s partial
/// image, rendered from brick `r` of `bricks(dims, partials.len())`; `order` is the
/// visibility order ([`crate::visibility_order`]). Returns the final image (gathered on rank
/// 0) and the bytes each rank received (folds, swaps and the final gather), counting only
/// the part of each region that holds the sender's data, at 16 bytes per pixel.
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
    if order.len() != p {
        return Err(VolrenError::InvalidArgument(format!(
            "order has {} entries for {p} partials",
            order.len()
        )));
    }
    let schedule = binary_swap_schedule(order, width, height)?;
    let full = Rect::full(width, height);
    let npx = width as usize * height as usize;
    let mut img: Vec<Vec<Rgba>> = Vec::with_capacity(p);
    let mut bbox: Vec<Rect> = Vec::with_capacity(p);
    for part in partials {
        let mut buf = vec![[0.0; 4]; npx];
        let b = part.rect.intersect(&full);
        for y in b.y0..b.y1 {
            for x in b.x0..b.x1 {
                buf[y as usize * width as usize + x as usize] = part.get(x, y);
            }
        }
        img.push(buf);
        bbox.push(b);
    }
    let mut bytes = vec![0u64; p];
    for step in &schedule.steps {
        let rects: Vec<Rect> = step
            .transfers
            .iter()
            .map(|t| bbox[t.from].intersect(&t.region))
            .collect();
        for (t, &rect) in step.transfers.iter().zip(&rects) {
            let src = std::mem::take(&mut img[t.from]);
            composite_rect(&mut img[t.to], &src, width, rect, t.sender_in_front);
            img[t.from] = src;
            bytes[t.to] += rect.area() as u64 * 16;
        }
        for t in &step.transfers {
            for r in [t.from, t.to] {
                bbox[r] = bbox[r].intersect(&step.regions[r]);
            }
        }
        for (t, &rect) in step.transfers.iter().zip(&rects) {
            bbox[t.to] = bbox[t.to].union(&rect);
        }
    }
    // Gather on rank 0.
    let mut out = Image::transparent(width, height);
    for (r, region) in schedule.final_regions().into_iter().enumerate() {
        for y in region.y0..region.y1 {
            let row = y as usize * width as usize;
            let (a, b) = (row + region.x0 as usize, row + region.x1 as usize);
            out.pixels[a..b].copy_from_slice(&img[r][a..b]);
        }
        if r != 0 {
            bytes[0] += bbox[r].intersect(&region).area() as u64 * 16;
        }
    }
    Ok((out, bytes))
}
