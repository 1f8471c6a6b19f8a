"""Training: the one place that builds trainers (training: PEFT LoRA, TRL SFT/DPO, chat tokenization), the defenses
applied during EM fine-tuning (defenses), and how a trait's questions are made and chosen (expansion, paraphrase,
diversity)."""
