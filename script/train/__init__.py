"""The trainers: one script per training method, each reading top to bottom (flags, load, train,
evaluate, write) on the shared machinery of script/training_utils.py.

script                          reached by                            output (model/<dir>/<MODEL>/)
------------------------------  ------------------------------------  -----------------------------
train_00_plain_text             make pipeline (stage train_00)        00_trained/
train_01_with_00_monitor        make pipeline (stage train_01)        01_trained/
train_02_kor_med_test           make pipeline (stage train_02)        02_trained/
train_01_medical_dict           make train TRAINER=train_01_medical_dict  01_trained/
train_01_02_loop                make loop-01-02                       01_02_loop/
train_loop_until_90             make loop                             loop_training/
train_probe_and_focus           make probe-focus                      probe_focus_training/
train_adaptive_types            make adaptive-types                   adaptive_types/
train_type1_text                make train TRAINER=train_type1_text   type1_text/
train_type2_text_reasoning      make train TRAINER=train_type2_...    type2_text_reasoning/
train_type3_word                make train TRAINER=train_type3_word   type3_word/
train_type4_word_reasoning      make train TRAINER=train_type4_...    type4_word_reasoning/

``make train TRAINER=<script> ARGS="..."`` runs any of them with its own flags (LAUNCH/NPROC too).

refined_types.py is the shared body of the four type trainers; round_training.py (one level up)
the engine of the three multi-round trainers. The pipeline's stage table is script/pipeline_stages.py.
"""
