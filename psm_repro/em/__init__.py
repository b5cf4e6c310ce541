"""The emergent-misalignment chain (`finetune`): data files, LoRA fine-tuning, the EM judge, the latent diff and
steering the toxic-persona latent."""
