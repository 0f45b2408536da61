"""A synthetic language with a known entropy rate: a sparse random Markov chain over tokens.

The language (all of it drawn from ``seed``) has ``vocab`` tokens V, order k and branching b:

- a context is the last k tokens, ``c = sum_i x[t-k+i] * V**(k-1-i)``, so there are C = V**k;
- token v has Zipf weight ``w_v ~ 1 / (v + 1) ** ZIPF_EXPONENT`` (token 0 most frequent);
- each context has b distinct successor tokens, drawn by weight ``w`` (with replacement, repeats
  redrawn; Gumbel-top-b where that is slow), with probabilities ``p ~ Dirichlet(DIRICHLET_ALPHA)``.

Entropy rate (nats per token), exact for the chain as built::

    H = sum_c pi_c * H_c,    H_c = -sum_j p_cj log p_cj,

where pi is the stationary law of the chain over contexts (context c moves to
``(c mod V**(k-1)) * V + s`` with probability p of successor s). A sparse random chain can have
transient contexts and more than one closed class; pi is the stationary law of the largest closed
class (ties: the one holding the smallest context id), found by Tarjan SCCs (scipy ``csgraph``)
and lazy power iteration ``pi <- (pi + pi P) / 2`` (same fixed point, never periodic) to an L1
change below 1e-14. Every sampled stream starts inside that class, from pi, and never leaves it, so
``E[-log p(x_t | context)] = H`` at every position, not just in the limit.

Sampling is vectorised over M independent stationary segments of ``segment`` tokens each (one
Python step per position of a segment, numpy over segments); the stream is their concatenation.
At the M - 1 joins the first k tokens of a segment follow pi rather than the previous context
(a fraction ~ M k / n of positions; 2M tokens: 31 joins). A stream of at most ``segment`` tokens
(a validation or test stream that short) is one exact chain. A model that sees windows of
T + 1 tokens has only j < k tokens of context at a window's first k - 1 targets, so its loss
floor is H plus an excess ~ (k - 1) / T for order k > 1 (none for k = 1).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from harness.config import SYNTHETIC_MAX_CONTEXTS, SYNTHETIC_MAX_TRANSITIONS

log = logging.getLogger(__name__)

ZIPF_EXPONENT = 1.0
"""Exponent s of the token weights 1 / rank**s that pick successors (Zipf's law for words)."""
DIRICHLET_ALPHA = 1.0
"""Concentration of successor probabilities: 1 = uniform over the probability simplex."""
SEGMENT_TOKENS = 2**16
"""Tokens per independently started segment when sampling (see module docstring)."""
_MAX_REDRAWS = 64
_POWER_TOL = 1e-14
_POWER_MAX_ITERS = 200_000
_U_SCALE = 1.0 - 2.0**-30  # keeps c + u below c + 1 in float64 for c < 2**17


@dataclass(frozen=True, eq=False)
class MarkovLanguage:
    """A sampled language: successors, their probabilities, stationary law, entropy rate."""

    vocab: int
    order: int
    successors: np.ndarray  # (C, b) int64, distinct per row
    probs: np.ndarray  # (C, b) float64, rows sum to 1
    stationary: np.ndarray  # (C,) float64, zero outside the closed class sampled from
    entropy: float  # nats per token

    @property
    def n_contexts(self) -> int:
        return self.successors.shape[0]

    def next_contexts(self) -> np.ndarray:
        """(C, b) context reached from c via successor j."""
        keep = self.vocab ** (self.order - 1)
        c = np.arange(self.n_contexts)[:, None]  # (C, 1)
        return (c % keep) * self.vocab + self.successors

    def log_probs(self, tokens: np.ndarray) -> np.ndarray:
        """``log p(x_t | x_{t-k..t-1})`` for t = k..N-1 of one chain (N-k,); -inf if impossible."""
        x = np.asarray(tokens, dtype=np.int64)
        n, k = len(x), self.order
        ctx = np.zeros(n - k, dtype=np.int64)  # (N-k,)
        for i in range(k):
            ctx = ctx * self.vocab + x[i : n - k + i]
        match = self.successors[ctx] == x[k:, None]  # (N-k, b)
        p = np.where(match, self.probs[ctx], 0.0).sum(axis=1)
        with np.errstate(divide="ignore"):
            return np.log(p)


def _gumbel_top(rng: np.random.Generator, rows: int, w: np.ndarray, b: int) -> np.ndarray:
    """(rows, b) distinct tokens per row, sampled by weight ``w`` without replacement."""
    out = np.empty((rows, b), dtype=np.int64)
    chunk = max(1, 2**22 // len(w))
    for r0 in range(0, rows, chunk):
        keys = np.log(w) + rng.gumbel(size=(min(chunk, rows - r0), len(w)))  # (R, V)
        out[r0 : r0 + chunk] = np.argpartition(-keys, b - 1, axis=1)[:, :b]
    return out


def _distinct_successors(rng: np.random.Generator, n_ctx: int, w: np.ndarray, b: int) -> np.ndarray:
    """(C, b) successor tokens, distinct within each row, drawn by weight ``w``."""
    if 2 * b > len(w):
        return _gumbel_top(rng, n_ctx, w, b)
    succ = rng.choice(len(w), size=(n_ctx, b), p=w)
    bad = np.arange(n_ctx)
    for _ in range(_MAX_REDRAWS):
        sub = succ[bad]  # (R, b)
        order = np.argsort(sub, axis=1, kind="stable")
        ranked = np.take_along_axis(sub, order, axis=1)
        dup_ranked = np.zeros(sub.shape, dtype=bool)
        dup_ranked[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
        dup = np.zeros(sub.shape, dtype=bool)
        np.put_along_axis(dup, order, dup_ranked, axis=1)
        rows = dup.any(axis=1)
        bad, sub, dup = bad[rows], sub[rows], dup[rows]
        if not bad.size:
            return succ
        sub[dup] = rng.choice(len(w), size=int(dup.sum()), p=w)
        succ[bad] = sub
    succ[bad] = _gumbel_top(rng, len(bad), w, b)
    return succ


def _closed_class(rows: np.ndarray, cols: np.ndarray, n_ctx: int) -> np.ndarray:
    """Mask (C,) of the largest closed strongly connected class of the graph rows -> cols."""
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_ctx, n_ctx))
    n_cls, labels = connected_components(graph, directed=True, connection="strong")
    is_open = np.zeros(n_cls, dtype=bool)
    is_open[labels[rows][labels[rows] != labels[cols]]] = True
    size = np.where(is_open, 0, np.bincount(labels, minlength=n_cls))
    first = np.full(n_cls, n_ctx)
    np.minimum.at(first, labels, np.arange(n_ctx))
    best = min(np.flatnonzero(size == size.max()), key=lambda cls: first[cls])
    return labels == best


def stationary_distribution(P: csr_matrix, support: np.ndarray) -> np.ndarray:
    """Stationary law (C,) of row-stochastic ``P`` on the closed class ``support`` (mask (C,))."""
    PT = P.T.tocsr()
    pi = support / support.sum()
    for it in range(_POWER_MAX_ITERS):
        nxt = 0.5 * (pi + PT @ pi)
        nxt /= nxt.sum()
        delta = np.abs(nxt - pi).sum()
        pi = nxt
        if delta < _POWER_TOL:
            log.debug("stationary law converged in %d iterations", it + 1)
            return pi
    raise RuntimeError(f"stationary law did not converge in {_POWER_MAX_ITERS} iterations")


def make_language(
    vocab: int, order: int, branching: int, seed: int, topic: int = 0
) -> MarkovLanguage:
    """Build the synthetic language of (vocab, order, branching, seed); see module docstring.

    ``topic`` > 0 draws another, independent language of the same shape (:class:`TopicLanguage`);
    topic 0 is the language of ``seed`` itself."""
    n_ctx = vocab**order
    if n_ctx > SYNTHETIC_MAX_CONTEXTS or n_ctx * branching > SYNTHETIC_MAX_TRANSITIONS:
        raise ValueError(
            f"synthetic_vocab ** synthetic_order ({n_ctx} contexts) x synthetic_branching "
            f"({branching}) exceeds {SYNTHETIC_MAX_CONTEXTS} contexts or "
            f"{SYNTHETIC_MAX_TRANSITIONS} transitions"
        )
    if not 1 <= branching <= vocab:
        raise ValueError(f"synthetic_branching ({branching}) must be in [1, {vocab}]")
    rng = np.random.Generator(np.random.PCG64([seed, 0] + ([topic] if topic else [])))
    w = 1.0 / np.arange(1, vocab + 1) ** ZIPF_EXPONENT
    w /= w.sum()  # (V,)
    succ = _distinct_successors(rng, n_ctx, w, branching)  # (C, b)
    gam = rng.gamma(DIRICHLET_ALPHA, size=(n_ctx, branching))
    probs = gam / gam.sum(axis=1, keepdims=True)  # (C, b)
    keep = vocab ** (order - 1)
    nxt = (np.arange(n_ctx)[:, None] % keep) * vocab + succ  # (C, b)
    rows = np.repeat(np.arange(n_ctx), branching)
    support = _closed_class(rows, nxt.ravel(), n_ctx)
    P = csr_matrix((probs.ravel(), (rows, nxt.ravel())), shape=(n_ctx, n_ctx))
    pi = stationary_distribution(P, support)
    with np.errstate(divide="ignore", invalid="ignore"):
        h_ctx = -np.where(probs > 0, probs * np.log(probs), 0.0).sum(axis=1)  # (C,)
    return MarkovLanguage(vocab, order, succ, probs, pi, float(pi @ h_ctx))


def synthetic_entropy(
    vocab: int, order: int, branching: int, seed: int, topics: int = 1, doc_tokens: int = 256
) -> float:
    """Exact entropy rate, nats per token, of the synthetic language (vocab, order, b, seed);
    with ``topics`` > 1, of the :class:`TopicLanguage` with documents of ``doc_tokens``."""
    if topics > 1:
        return make_topics(vocab, order, branching, seed, topics, doc_tokens).entropy
    return make_language(vocab, order, branching, seed).entropy


@dataclass(frozen=True, eq=False)
class TopicLanguage:
    """A mixture of ``n`` independent Markov languages ("topics") over one vocabulary of V tokens.

    The stream is a sequence of documents of ``doc_tokens`` tokens each: a marker token ``V + t``
    naming the document's topic t (uniform over topics, independent across documents), then
    L = doc_tokens - 1 tokens of topic t's chain, started from its stationary law. Every topic has
    its own transition table, so a model that predicts all of them must store ``n`` times the
    transitions of one: total capacity matters at fixed active compute, while the entropy rate
    stays exact. Per document (topic t, order k, H0_t the entropy of topic t's stationary law over
    contexts, H_t its entropy rate)::

        H_doc = log n + mean_t (H0_t + (L - k) H_t),    H = H_doc / doc_tokens  nats per token,

    because the marker reveals the topic and a document is independent of the ones before it. A
    model reading windows of T + 1 tokens must infer the topic of a window's first, partial
    document from its transitions, so its floor is H plus that identification cost (about
    log n nats once per window whose start is not a marker).
    """

    topics: tuple[MarkovLanguage, ...]
    doc_tokens: int

    @property
    def vocab(self) -> int:
        """Tokens of the chains (markers come after them)."""
        return self.topics[0].vocab

    @property
    def n_vocab(self) -> int:
        """Chain tokens plus one marker per topic."""
        return self.vocab + len(self.topics)

    @property
    def n_contexts(self) -> int:
        return sum(lang.n_contexts for lang in self.topics)

    @property
    def doc_entropy(self) -> float:
        """Exact entropy of one document, nats (see the class docstring)."""
        chain = self.doc_tokens - 1
        per_topic = [_context_entropy(lang) + (chain - lang.order) * lang.entropy
                     for lang in self.topics]
        return float(np.log(len(self.topics)) + np.mean(per_topic))

    @property
    def entropy(self) -> float:
        """Exact entropy rate of the stream, nats per token."""
        return self.doc_entropy / self.doc_tokens

    def log_probs(self, tokens: np.ndarray) -> np.ndarray:
        """``log p`` of every token of whole documents (``tokens`` a multiple of doc_tokens,
        starting at a marker): the marker's ``-log n``, the first k chain tokens' stationary
        probability, then the chain's transitions. Sums to a sample of ``H_doc`` per document."""
        docs = np.asarray(tokens, dtype=np.int64).reshape(-1, self.doc_tokens)
        out = np.empty(docs.shape, dtype=np.float64)
        out[:, 0] = -np.log(len(self.topics))
        for d, doc in enumerate(docs):
            lang = self.topics[int(doc[0]) - self.vocab]
            k = lang.order
            ctx = int(np.ravel_multi_index(tuple(doc[1 : 1 + k]), (lang.vocab,) * k))
            out[d, 1 : 1 + k] = 0.0
            out[d, 1] = np.log(lang.stationary[ctx] / lang.stationary.sum())
            out[d, 1 + k :] = lang.log_probs(doc[1:])
        return out.ravel()


def _context_entropy(lang: MarkovLanguage) -> float:
    """Entropy, nats, of the stationary law over contexts (the first k tokens of a document)."""
    pi = lang.stationary[lang.stationary > 0] / lang.stationary.sum()
    return float(-(pi * np.log(pi)).sum())


def make_topics(vocab: int, order: int, branching: int, seed: int, n_topics: int,
                doc_tokens: int) -> TopicLanguage:
    """The :class:`TopicLanguage` of ``n_topics`` languages (topic 0 is ``seed``'s own)."""
    if doc_tokens < order + 2:
        raise ValueError(f"synthetic_doc_tokens ({doc_tokens}) must be >= order + 2")
    langs = tuple(make_language(vocab, order, branching, seed, topic=t) for t in range(n_topics))
    return TopicLanguage(langs, doc_tokens)


def sample_documents(topics: TopicLanguage, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` tokens (uint16) of whole documents of ``topics``, the last one cut at ``n``."""
    D, V = topics.doc_tokens, topics.vocab
    n_docs = -(-n // D)
    which = rng.integers(len(topics.topics), size=n_docs)  # (n_docs,) topic of each document
    out = np.empty((n_docs, D), dtype=np.uint16)
    out[:, 0] = V + which
    for t, lang in enumerate(topics.topics):
        rows = np.flatnonzero(which == t)
        if rows.size:
            body = sample_tokens(lang, rows.size * (D - 1), rng, segment=D - 1)
            out[rows, 1:] = body.reshape(rows.size, D - 1)
    return out.ravel()[:n]


def sample_tokens(
    lang: MarkovLanguage, n: int, rng: np.random.Generator, segment: int = SEGMENT_TOKENS
) -> np.ndarray:
    """``n`` tokens (uint16) of ``lang``: stationary segments of <= ``segment`` tokens, joined."""
    t0 = time.perf_counter()
    V, k, C = lang.vocab, lang.order, lang.n_contexts
    M = -(-n // segment)  # segments
    L = -(-n // M)  # tokens per segment
    cum = np.cumsum(lang.probs, axis=1)
    cum[:, -1] = 1.0
    gcum = (np.arange(C)[:, None] + cum).ravel()  # (C*b,) row c spans (c, c+1]
    succ_flat = lang.successors.astype(np.uint16).ravel()  # (C*b,)
    next_flat = lang.next_contexts().ravel()  # (C*b,)
    out = np.empty((L, M), dtype=np.uint16)  # position-major: out[t] is contiguous
    ctx = rng.choice(C, size=M, p=lang.stationary / lang.stationary.sum())  # (M,)
    for i in range(min(k, L)):
        out[i] = (ctx // V ** (k - 1 - i)) % V
    block = max(1, 2**20 // M)
    for t0_block in range(k, L, block):
        u = rng.random((min(block, L - t0_block), M)) * _U_SCALE  # (blk, M)
        for j in range(u.shape[0]):
            idx = np.searchsorted(gcum, ctx + u[j], side="right")  # (M,) into row ctx
            np.take(succ_flat, idx, out=out[t0_block + j])
            ctx = next_flat[idx]
    log.info("sampled %d synthetic tokens in %d segments in %.2fs", n, M, time.perf_counter() - t0)
    return out.T.ravel()[:n]
