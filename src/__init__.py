"""cifar10-lab: run, reproduce and extend CIFAR-10 architecture studies."""
