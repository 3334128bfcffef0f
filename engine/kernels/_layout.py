"""The layout of a compiled plan: the columns of its tables, its opcodes and leaf kinds.

One definition, imported by the compiler (engine/_plan.py), which builds the rows, and by the
kernels (engine/kernels/_eval.py), which read them. Numba reads these module globals as
compile-time constants, so a named column costs nothing over a bare index.

Every table is a C-contiguous int64 array with one row per item:

``seg_tab[nseg, SEG_NCOLS]`` - one row per segment (or feature expression) of the plan:
    SEG_POFF, SEG_PLEN       its program: ``prog[poff:poff+plen]``
    SEG_LOFF, SEG_LLEN       its leaves: ``leaves[loff:loff+llen]`` (the program's OP_LEAF
                             operands are relative to ``loff``)
    SEG_SLOT                 its membership bit: word ``slot >> 6``, bit ``slot & 63`` of a
                             row of ``member``
    SEG_EVMASK, SEG_TRMASK   the event types / trait columns it reads, as 64-bit masks (bit
                             ``id & 63``; stored as int64, read as uint64)
    SEG_TIMEDEP              1 if its value can change with time alone (it reads events, a
                             trait time, or a segment that does)
    SEG_DOFF, SEG_DLEN       the plan indices of the segments it references:
                             ``dep_list[doff:doff+dlen]``

``leaves[nleaf, LEAF_NCOLS]`` - one row per aggregate call (``count``, ``since``,
``sequence`` ...):
    LEAF_KIND                one of the ``L_*`` kinds below
    LEAF_TYPE                event type id (unused by L_SEQ: each step has its own)
    LEAF_COL                 arena column of the aggregated property (0 = none)
    LEAF_WINDOW              window, ms (unused by L_SINCE / L_SINCE_FIRST)
    LEAF_FOFF, LEAF_FLEN     where-filter program: ``fprog[foff:foff+flen]`` (0 = no filter)
    LEAF_AUX, LEAF_AUX_LEN   kind-specific: L_SEQ: its steps ``steps[aux:aux+aux_len]``;
                             L_AFF_SCORE / L_AFF_RANK: ``consts[aux]`` is VALUE (aux_len 0);
                             L_DAYS with a time zone: the zone's offset table starts at
                             ``consts[aux]`` and has ``aux_len`` transitions (0 = UTC days)
    LEAF_CMP_OP, LEAF_CMP_CONST  when the leaf is compared with a number (``count(E, W) >=
                             3``): the comparison opcode and the constant's index in
                             ``consts``, so that its timer can wait for the first departure
                             that may flip it; 0, 0 otherwise

``steps[nstep, STEP_NCOLS]`` - one row per step of a ``sequence`` call:
    STEP_TYPE                event type id
    STEP_FOFF, STEP_FLEN     the step's where-filter program in ``fprog``

``prog[n, PROG_NCOLS]`` (segment programs) and ``fprog[n, PROG_NCOLS]`` (filter programs over
one event) - one row per postfix instruction:
    PROG_OP                  an ``OP_*`` opcode
    PROG_A1, PROG_A2, PROG_A3  its operands (meaning per opcode, see ``_eval._program`` and
                             ``_eval._match``)

``consts[nconst]`` float64 holds the boxed constants the tables index.
"""

from __future__ import annotations

# -- seg_tab columns ----------------------------------------------------------------------
SEG_POFF, SEG_PLEN, SEG_LOFF, SEG_LLEN, SEG_SLOT = 0, 1, 2, 3, 4
SEG_EVMASK, SEG_TRMASK, SEG_TIMEDEP, SEG_DOFF, SEG_DLEN = 5, 6, 7, 8, 9
SEG_NCOLS = 10

# -- leaves columns -----------------------------------------------------------------------
LEAF_KIND, LEAF_TYPE, LEAF_COL, LEAF_WINDOW, LEAF_FOFF, LEAF_FLEN = 0, 1, 2, 3, 4, 5
LEAF_AUX, LEAF_AUX_LEN, LEAF_CMP_OP, LEAF_CMP_CONST = 6, 7, 8, 9
LEAF_NCOLS = 10

# -- steps columns ------------------------------------------------------------------------
STEP_TYPE, STEP_FOFF, STEP_FLEN = 0, 1, 2
STEP_NCOLS = 3

# -- prog / fprog columns -----------------------------------------------------------------
PROG_OP, PROG_A1, PROG_A2, PROG_A3 = 0, 1, 2, 3
PROG_NCOLS = 4

# -- opcodes (PROG_OP) ----------------------------------------------------------------------
# OP_CONST a1=const index; OP_LEAF a1=leaf index relative to SEG_LOFF; OP_TRAIT /
# OP_EXISTS_TRAIT a1=trait column; OP_TRAIT_TIME a1=trait column, a2=+1 since / -1 until;
# OP_NEAR a1=first of 3 consts (lat, lon, metres), a2/a3=lat/lon trait columns; OP_SEG
# a1=membership slot; OP_PROP / OP_EXISTS_PROP (filters) a1=arena column; OP_IN a1=first
# const, a2=count, a3=negated; OP_AND / OP_OR a1=number of operands; OP_SKIP (after an
# operand of an and/or, not the last): a1=instructions to jump (to just past the and/or),
# a2=the and/or's operands on the stack so far, a3=1 for and / 0 for or.
OP_CONST, OP_LEAF, OP_TRAIT, OP_TRAIT_TIME, OP_EXISTS_TRAIT, OP_NEAR, OP_SEG = 1, 2, 3, 4, 5, 6, 7
OP_PROP, OP_EXISTS_PROP = 8, 9
OP_NEG, OP_ADD, OP_SUB, OP_MUL, OP_DIV = 10, 11, 12, 13, 14
OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_BETWEEN = 20, 21, 22, 23, 24, 25, 26, 27
OP_AND, OP_OR, OP_NOT, OP_SKIP = 30, 31, 32, 33
OP_BUCKET = 40   # a1: first of 5 consts (high cut, medium cut, "high", "medium", "low")
# a1: first of the source's RFM constants, a2: the mode (engine._rfm): RFM_F pops a count;
# RFM_R / RFM_M / RFM_TIER pop a count and a metric (since / sum / since). Constants: 4
# boundaries of the score (recency: 4 since-boundaries), for RFM_TIER 4 recency + 4 frequency
# boundaries and the 25 tier names. Boundaries not computed yet are null: the score is null.
OP_RFM = 41

# -- leaf kinds (LEAF_KIND) -----------------------------------------------------------------
L_COUNT, L_SUM, L_AVG, L_MIN, L_MAX, L_DISTINCT, L_TOP, L_DAYS, L_AFF = 1, 2, 3, 4, 5, 6, 7, 8, 9
L_SINCE, L_SINCE_FIRST, L_SEQ = 10, 11, 12
# extensions (docs/expressions.md): LEAF_AUX holds VALUE's constant index
L_AFF_SCORE, L_AFF_RANK = 13, 14

# depth of the evaluation stacks (the compiler rejects deeper expressions)
MAX_STACK = 64
