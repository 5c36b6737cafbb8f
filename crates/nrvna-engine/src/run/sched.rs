//! The batched engine's scheduling, apart from llama.cpp: which waiting job
//! is admitted next and onto which KV cells (prefix reuse), which job is
//! preempted when the cache is full, how a decode batch is filled, and
//! whether a finished prompt is kept as the prefix cache. Pure functions of
//! token lists and counters, unit-tested without a model; `batched` applies
//! the decisions to the context.

use std::collections::VecDeque;

/// Cells kept free per running sequence when admitting another, so that
/// running jobs can grow for a while before anyone must be preempted.
pub const GROWTH_MARGIN: usize = 32;

/// A sequence's scheduling state (its tokens and where they stand in the KV).
#[derive(Clone, Debug)]
pub struct SeqState<T> {
    /// KV sequence id while admitted.
    pub slot: Option<i32>,
    /// Prompt tokens, then every generated token that goes back in.
    pub toks: Vec<T>,
    pub n_prompt: usize,
    /// Positions of `toks` already in the KV cache.
    pub n_past: usize,
    /// Prompt tokens whose cells came from another sequence.
    pub reused: usize,
    /// Leading cells it shares with other sequences while admitted (a
    /// prefix attached in one shared stream: no cells of its own).
    pub shared: usize,
    /// Admission order: the largest is the youngest.
    pub admitted: u64,
}

impl<T> SeqState<T> {
    pub fn new(toks: Vec<T>) -> SeqState<T> {
        SeqState {
            slot: None,
            n_prompt: toks.len(),
            toks,
            n_past: 0,
            reused: 0,
            shared: 0,
            admitted: 0,
        }
    }

    /// Tokens still to be decoded (prompt chunks, or the last sampled token).
    pub fn todo(&self) -> usize {
        self.toks.len() - self.n_past
    }
}

pub fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// What to do to admit a waiting sequence.
#[derive(Debug, PartialEq, Eq)]
pub struct Admission {
    /// Index in the waiting queue.
    pub idx: usize,
    /// Clear the prefix-cache sequence first (to make room).
    pub drop_cache: bool,
    /// Copy this many leading cells from that sequence instead of decoding them.
    pub reuse: Option<(i32, usize)>,
}

/// One sequence's share of a decode batch.
#[derive(Debug, PartialEq, Eq)]
pub struct Feed {
    /// Index in the active list.
    pub seq: usize,
    /// Positions `from..from + take` of its tokens.
    pub from: usize,
    pub take: usize,
    /// Whether the batch's last token of this sequence is its last token
    /// (logits wanted there).
    pub wants_logits: bool,
}

impl Feed {
    /// Prompt tokens rather than one generation step (several tokens, or
    /// a prompt chunk that is not its last).
    pub fn is_prompt(&self) -> bool {
        self.take > 1 || !self.wants_logits
    }
}

/// The KV bookkeeping of the one shared context.
#[derive(Debug)]
pub struct Sched<T> {
    pub n_ctx: usize,
    pub n_batch: usize,
    pub min_reuse: usize,
    pub free_slots: Vec<i32>,
    /// The spare sequence that keeps the last finished prompt.
    pub cache_seq: i32,
    /// Tokens held by the prefix-cache sequence.
    pub cache: Vec<T>,
    /// Whether a reused prefix shares its cells (one stream for every
    /// sequence) rather than copying them (a stream per sequence).
    pub shares_cells: bool,
    admissions: u64,
}

impl<T: PartialEq + Clone> Sched<T> {
    /// `slots` sequences for jobs, plus sequence `slots` for the prefix cache.
    pub fn new(n_ctx: usize, n_batch: usize, slots: u32, min_reuse: usize) -> Sched<T> {
        Sched {
            n_ctx,
            n_batch,
            min_reuse,
            free_slots: (0..slots as i32).rev().collect(),
            cache_seq: slots as i32,
            cache: Vec::new(),
            shares_cells: false,
            admissions: 0,
        }
    }

    /// Reused prefixes share their cells (one stream for every sequence).
    pub fn sharing_cells(mut self, yes: bool) -> Sched<T> {
        self.shares_cells = yes;
        self
    }

    /// The cells in use, or a bound a little above. Where prefixes share
    /// their cells, each sequence counts its own cells and the longest
    /// shared prefix counts once (it outlives the sequence it came from);
    /// sequences attached to different prefixes can hold more than that,
    /// and a decode that finds no room preempts the youngest. Where
    /// prefixes are copied, every sequence counts all of its cells.
    pub fn cells_used<'a>(&self, active: impl Iterator<Item = &'a SeqState<T>>) -> usize
    where
        T: 'a,
    {
        let (mut own, mut longest_shared) = (0, 0);
        for s in active {
            let cells = s.n_past + s.todo();
            if self.shares_cells {
                own += cells - s.shared.min(cells);
                longest_shared = longest_shared.max(s.shared);
            } else {
                own += cells;
            }
        }
        own + longest_shared + self.cache.len()
    }

    /// The cells a sequence attached to `reuse` shares rather than holds.
    fn shared_by(&self, reuse: Option<(i32, usize)>) -> usize {
        match reuse {
            Some((_, n)) if self.shares_cells => n,
            _ => 0,
        }
    }

    /// The best KV source for `toks`: (sequence id, usable prefix length),
    /// and whether a longer shared prefix is still being computed.
    pub fn best_prefix(&self, toks: &[T], active: &[&SeqState<T>]) -> (Option<(i32, usize)>, bool) {
        self.best_prefix_from(toks, active, true)
    }

    /// [`Sched::best_prefix`], with or without the prefix-cache sequence.
    fn best_prefix_from(&self, toks: &[T], active: &[&SeqState<T>], cache: bool) -> (Option<(i32, usize)>, bool) {
        if self.min_reuse == 0 || toks.is_empty() {
            return (None, false);
        }
        let cap = toks.len() - 1; // the last token must be decoded for logits
        let mut best: Option<(i32, usize)> = None;
        let mut pending = false;
        let mut consider = |seq: i32, lcp: usize, in_kv: usize| {
            let usable = lcp.min(in_kv).min(cap);
            if lcp.min(cap) > usable && lcp.min(cap) >= self.min_reuse {
                pending = true;
            }
            if usable >= self.min_reuse && best.is_none_or(|(_, b)| usable > b) {
                best = Some((seq, usable));
            }
        };
        for s in active {
            if let Some(slot) = s.slot {
                consider(slot, common_prefix(toks, &s.toks[..s.n_prompt]), s.n_past);
            }
        }
        if cache {
            consider(self.cache_seq, common_prefix(toks, &self.cache), self.cache.len());
        }
        let pending = pending && best.is_none_or(|(_, b)| b < cap);
        (best, pending)
    }

    /// The next waiting sequence to admit, if one fits. Waiting jobs are
    /// taken in order, except that one whose shared prefix is still being
    /// computed by a running job waits for it while later ones go ahead.
    pub fn next_admission(&self, active: &[&SeqState<T>], waiting: &VecDeque<&SeqState<T>>) -> Option<Admission> {
        if self.free_slots.is_empty() {
            return None;
        }
        let used = self.cells_used(active.iter().copied());
        let longest_shared = active.iter().map(|s| s.shared).max().unwrap_or(0);
        for (idx, w) in waiting.iter().enumerate() {
            let (best, pending) = self.best_prefix(&w.toks, active);
            if pending && w.n_past == 0 {
                continue;
            }
            // The cells admitting it adds to `cells_used`, with room to grow.
            let need = |reuse: Option<(i32, usize)>| {
                let shared = self.shared_by(reuse);
                w.toks.len() - shared + shared.saturating_sub(longest_shared) + GROWTH_MARGIN * (active.len() + 1)
            };
            let mut drop_cache = false;
            let mut reuse = best;
            let mut used_now = used;
            if used_now + need(reuse) > self.n_ctx && !self.cache.is_empty() {
                drop_cache = true;
                used_now -= self.cache.len();
                if reuse.is_some_and(|(s, _)| s == self.cache_seq) {
                    // The cache goes: the best running sequence instead.
                    reuse = self.best_prefix_from(&w.toks, active, false).0;
                }
            }
            if used_now + need(reuse) > self.n_ctx && !active.is_empty() {
                return None; // in order: wait for running jobs to free cells
            }
            return Some(Admission { idx, drop_cache, reuse });
        }
        None
    }

    /// Marks `s` admitted into a free slot, after the caller copied any
    /// reused cells. Returns the slot.
    pub fn admit(&mut self, s: &mut SeqState<T>, reuse: Option<(i32, usize)>) -> i32 {
        // The lowest free slot, so that running sequences keep neighbouring
        // ids (a per-sequence KV layout decodes runs of consecutive ids
        // together).
        let i = (0..self.free_slots.len())
            .min_by_key(|&i| self.free_slots[i])
            .expect("next_admission checked for a free slot");
        let slot = self.free_slots.swap_remove(i);
        self.admissions += 1;
        s.slot = Some(slot);
        s.admitted = self.admissions;
        s.n_past = 0;
        s.shared = self.shared_by(reuse);
        if let Some((_, n)) = reuse {
            s.n_past = n;
            s.reused = s.reused.max(n.min(s.n_prompt));
        }
        slot
    }

    /// The sequence to preempt when the cache is full: the youngest, if
    /// another one is left running.
    pub fn youngest(&self, active: &[&SeqState<T>]) -> Option<usize> {
        if active.len() < 2 {
            return None;
        }
        (0..active.len()).max_by_key(|&i| active[i].admitted)
    }

    /// Gives a sequence's slot back (its cells are removed by the caller).
    pub fn free(&mut self, s: &mut SeqState<T>) -> Option<i32> {
        let slot = s.slot.take()?;
        self.free_slots.push(slot);
        s.n_past = 0;
        s.shared = 0;
        Some(slot)
    }

    /// Fills one decode batch: the next token of every generating sequence
    /// first, then prompt chunks of prefilling ones, up to `n_batch` tokens.
    /// With `only`, just that active sequence (used to find which job's
    /// input a failed decode came from).
    pub fn plan_batch(&self, active: &[&SeqState<T>], only: Option<usize>) -> Vec<Feed> {
        let mut order: Vec<usize> = match only {
            Some(i) if i < active.len() => vec![i],
            Some(_) => Vec::new(),
            None => (0..active.len()).collect(),
        };
        order.sort_by_key(|&i| active[i].todo() > 1);
        let mut budget = self.n_batch;
        let mut feeds = Vec::new();
        for i in order {
            let s = active[i];
            let take = budget.min(s.todo());
            if take == 0 {
                continue;
            }
            feeds.push(Feed {
                seq: i,
                from: s.n_past,
                take,
                wants_logits: s.n_past + take == s.toks.len(),
            });
            budget -= take;
        }
        feeds
    }

    /// Whether a finished sequence's prompt should replace the prefix cache:
    /// reuse is on, enough of its prompt is in the KV, it fits, and the cache
    /// does not already hold it.
    pub fn keep_as_cache(&self, s: &SeqState<T>, cells_used_by_others: usize) -> Option<usize> {
        let prompt_in_kv = s.n_past.min(s.n_prompt);
        if self.min_reuse == 0 || prompt_in_kv < self.min_reuse {
            return None;
        }
        let fits = cells_used_by_others + prompt_in_kv <= self.n_ctx;
        (fits && common_prefix(&self.cache, &s.toks[..prompt_in_kv]) < prompt_in_kv).then_some(prompt_in_kv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(toks: &[u32]) -> SeqState<u32> {
        SeqState::new(toks.to_vec())
    }

    fn sched(n_ctx: usize) -> Sched<u32> {
        Sched::new(n_ctx, 8, 4, 3)
    }

    #[test]
    fn admits_in_order_and_reuses_the_longest_prefix_in_the_kv() {
        let mut sc = sched(1000);
        let mut a = seq(&[1, 2, 3, 4, 5, 6]);
        sc.admit(&mut a, None);
        a.n_past = 6; // prefilled
        let b = seq(&[1, 2, 3, 4, 9, 9]);
        let waiting: VecDeque<&SeqState<u32>> = [&b].into();
        let adm = sc.next_admission(&[&a], &waiting).expect("fits");
        assert_eq!(
            adm,
            Admission {
                idx: 0,
                drop_cache: false,
                reuse: Some((a.slot.unwrap(), 4))
            }
        );
        // A prefix shorter than min_reuse is not worth a copy.
        let c = seq(&[1, 2, 7, 7]);
        assert_eq!(sc.best_prefix(&c.toks, &[&a]), (None, false));
    }

    #[test]
    fn a_job_waits_for_a_shared_prefix_still_being_computed_while_others_go_ahead() {
        let mut sc = sched(1000);
        let mut a = seq(&[1, 2, 3, 4, 5, 6, 7, 8]);
        sc.admit(&mut a, None);
        a.n_past = 2; // the shared part is not in the KV yet
        let same = seq(&[1, 2, 3, 4, 5, 6, 7, 9]);
        let other = seq(&[42, 43]);
        let waiting: VecDeque<&SeqState<u32>> = [&same, &other].into();
        let adm = sc.next_admission(&[&a], &waiting).unwrap();
        assert_eq!(adm.idx, 1, "the unrelated job goes first");
        assert!(sc.best_prefix(&same.toks, &[&a]).1, "pending prefix");
    }

    #[test]
    fn never_reuses_the_last_prompt_token_and_uses_the_cache_sequence() {
        let mut sc = sched(1000);
        sc.cache = vec![1, 2, 3, 4];
        let p = seq(&[1, 2, 3, 4]);
        // Identical prompt: 3 cells copied, the last decoded for its logits.
        assert_eq!(sc.best_prefix(&p.toks, &[]), (Some((sc.cache_seq, 3)), false));
    }

    #[test]
    fn admission_drops_the_cache_for_room_and_then_waits_in_order() {
        let mut sc = Sched::<u32>::new(100, 8, 4, 3);
        sc.cache = vec![5; 40];
        let big = seq(&[1; 30]);
        let waiting: VecDeque<&SeqState<u32>> = [&big].into();
        // Alone: 30 + 32 = 62 fits only without the 40-cell cache.
        let adm = sc.next_admission(&[], &waiting).unwrap();
        assert!(adm.drop_cache);
        sc.cache.clear();
        let mut running = seq(&[2; 20]);
        sc.admit(&mut running, None);
        // With one running (20 cells): 20 + 30 + 64 > 100: wait.
        assert_eq!(sc.next_admission(&[&running], &waiting), None);
        // No free slot: nothing is admitted whatever fits.
        sc.free_slots.clear();
        let tiny = seq(&[3]);
        assert_eq!(sc.next_admission(&[], &[&tiny].into()), None);
    }

    /// Starts `first`, then admits copies of `next` (each attached to the
    /// prefix `next_admission` picks, then prefilled) until one does not
    /// fit; returns how many were admitted.
    fn admitted_beside(sc: &mut Sched<u32>, first: &[u32], next: &[u32]) -> usize {
        let mut running = vec![seq(first)];
        sc.admit(&mut running[0], None);
        running[0].n_past = first.len();
        loop {
            let mut w = seq(next);
            let adm = {
                let active: Vec<&SeqState<u32>> = running.iter().collect();
                sc.next_admission(&active, &[&w].into())
            };
            let Some(adm) = adm else {
                return running.len() - 1;
            };
            sc.admit(&mut w, adm.reuse);
            w.n_past = w.toks.len();
            running.push(w);
            if sc.free_slots.is_empty() {
                return running.len() - 1;
            }
        }
    }

    #[test]
    fn a_prefix_shared_in_one_stream_counts_once_and_a_copied_one_per_sequence() {
        // A 500-token instruction, then each job's own 10 tokens.
        let prefix: Vec<u32> = (1000..1500).collect();
        let job = |k: u32| -> Vec<u32> { prefix.iter().copied().chain(k * 100..k * 100 + 10).collect() };
        let mut shared = Sched::<u32>::new(2000, 8, 16, 3).sharing_cells(true);
        let n = admitted_beside(&mut shared, &job(1), &job(2));
        assert_eq!(n, 15, "all 16 sequences fit in 2000 cells when the prefix is held once");
        let mut copied = Sched::<u32>::new(2000, 8, 16, 3);
        let n = admitted_beside(&mut copied, &job(1), &job(2));
        assert_eq!(n, 2, "copied prefixes fill 2000 cells after 3 sequences");
    }

    #[test]
    fn dropping_the_cache_for_room_reuses_a_running_prefix_instead() {
        let mut sc = Sched::<u32>::new(400, 8, 4, 3);
        // The cache holds the whole prompt; a running job its first 100 tokens.
        let prompt: Vec<u32> = (0..120).collect();
        sc.cache = prompt.clone();
        let mut running = seq(&prompt[..100].iter().copied().chain([7; 50]).collect::<Vec<_>>());
        sc.admit(&mut running, None);
        running.n_past = 150;
        let w = seq(&prompt);
        let adm = sc
            .next_admission(&[&running], &[&w].into())
            .expect("fits without the cache");
        assert!(adm.drop_cache);
        assert_eq!(adm.reuse, Some((running.slot.unwrap(), 100)), "not a full recompute");
    }

    #[test]
    fn a_lone_job_is_admitted_even_if_it_fills_the_context() {
        let sc = Sched::<u32>::new(64, 8, 2, 3);
        let long = seq(&[1; 60]);
        assert!(sc.next_admission(&[], &[&long].into()).is_some());
    }

    #[test]
    fn preemption_picks_the_youngest_and_never_the_last_one() {
        let mut sc = sched(1000);
        let (mut a, mut b, mut c) = (seq(&[1]), seq(&[2]), seq(&[3]));
        sc.admit(&mut a, None);
        sc.admit(&mut c, None);
        sc.admit(&mut b, None);
        assert_eq!(sc.youngest(&[&a, &b, &c]), Some(1));
        assert_eq!(sc.youngest(&[&a]), None);
        let slot = b.slot;
        assert_eq!(sc.free(&mut b), slot);
        assert!(sc.free_slots.contains(&slot.unwrap()));
        assert_eq!(b.n_past, 0, "a preempted job re-decodes from the start");
    }

    #[test]
    fn batches_put_generating_tokens_first_and_chunk_prompts() {
        let sc = sched(1000); // n_batch 8
        let mut gen = seq(&[1, 2, 3]);
        gen.n_past = 2; // one token to decode: generating
        let pre1 = seq(&[4; 6]);
        let pre2 = seq(&[5; 6]);
        let feeds = sc.plan_batch(&[&pre1, &gen, &pre2], None);
        assert_eq!(
            feeds,
            vec![
                Feed {
                    seq: 1,
                    from: 2,
                    take: 1,
                    wants_logits: true
                },
                Feed {
                    seq: 0,
                    from: 0,
                    take: 6,
                    wants_logits: true
                },
                Feed {
                    seq: 2,
                    from: 0,
                    take: 1,
                    wants_logits: false
                },
            ]
        );
        let alone = sc.plan_batch(&[&pre1, &gen, &pre2], Some(2));
        assert_eq!(alone.len(), 1);
        assert_eq!(alone[0].seq, 2);
        assert_eq!(alone[0].take, 6);
    }

    #[test]
    fn a_finished_prompt_replaces_the_cache_only_when_new_and_fitting() {
        let mut sc = sched(100);
        let mut s = seq(&[1, 2, 3, 4, 5]);
        s.n_past = 7; // prompt + 2 generated
        s.toks.extend([8, 9]);
        assert_eq!(sc.keep_as_cache(&s, 0), Some(5));
        assert_eq!(sc.keep_as_cache(&s, 96), None, "does not fit");
        sc.cache = vec![1, 2, 3, 4, 5, 6];
        assert_eq!(sc.keep_as_cache(&s, 0), None, "already cached");
        let short = seq(&[1, 2]);
        assert_eq!(sc.keep_as_cache(&short, 0), None, "under min_reuse");
    }
}
