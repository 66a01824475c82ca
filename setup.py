from setuptools import setup

setup(
    name="imnet",
    version="0.1.0",
    description="A small, readable, fast and provably correct ImageNet training and evaluation reference.",
    packages=["imnet", "imnet.run", "imnet.tools"],
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "torchvision>=0.19", "numpy", "pillow>=9.1"],
    # The test extra also installs what the tests compare against or read back: timm (its LARS, LAMB and
    # binary cross-entropy, an independent implementation of imnet's) and tensorboard (--tensorboard's events).
    extras_require={"test": ["pytest>=7.3", "tensorboard>=2.10", "timm>=1.0.31,<1.1"], "tensorboard": ["tensorboard>=2.10"]},
)
