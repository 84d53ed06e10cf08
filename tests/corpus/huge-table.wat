(module (table 200000000 funcref) (memory (export "memory") 1) (func (export "_start")))
