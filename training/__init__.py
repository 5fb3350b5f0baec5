"""Fine-tune a torchvision-compatible ResNet on an ImageFolder tree and publish it to the model store.

`python -m training --data DIR --out DIR ...` runs on one CPU, one GPU, or under `torchrun` on
several processes and machines (DDP). Evaluation uses `model_store.preprocess.to_tensor`, the
function the handler serves with, so training and serving cannot drift apart.
"""
