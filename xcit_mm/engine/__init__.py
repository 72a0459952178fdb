from .launch import CPUCompatibleDDP, init_cpu_distributed

__all__ = ['CPUCompatibleDDP', 'init_cpu_distributed']
