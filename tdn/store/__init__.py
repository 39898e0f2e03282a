"""State storage behind one interface: embedded (local disk) or etcd."""
