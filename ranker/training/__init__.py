"""Everything that trains a ranker; serving never imports it.

:mod:`.lists`, :mod:`.cold_start` and :mod:`.teacher_lists` build training lists;
:mod:`.metrics` scores and calibrates them; :mod:`.trainer` fine-tunes the cross-encoder;
:mod:`.rerank_blend` fits the blend; :mod:`.fit` chains them; :mod:`.student_init` and
:mod:`.distill` distil a teacher into a student; :mod:`.features` computes the blend's
columns offline.
"""
