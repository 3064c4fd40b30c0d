package org.kavier.bridge;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.Channels;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import org.apache.parquet.column.page.PageReadStore;
import org.apache.parquet.example.data.Group;
import org.apache.parquet.example.data.simple.convert.GroupRecordConverter;
import org.apache.parquet.hadoop.ParquetFileReader;
import org.apache.parquet.io.ColumnIOFactory;
import org.apache.parquet.io.DelegatingSeekableInputStream;
import org.apache.parquet.io.InputFile;
import org.apache.parquet.io.MessageColumnIO;
import org.apache.parquet.io.OutputFile;
import org.apache.parquet.io.PositionOutputStream;
import org.apache.parquet.io.RecordReader;
import org.apache.parquet.io.SeekableInputStream;
import org.apache.parquet.schema.MessageType;

/** Local-file Parquet I/O for the tests, without Hadoop's FileSystem. */
final class LocalParquet {
    private LocalParquet() {}

    static OutputFile output(Path path) {
        return new OutputFile() {
            @Override
            public PositionOutputStream create(long blockSizeHint) throws IOException {
                return open(StandardOpenOption.CREATE_NEW);
            }

            @Override
            public PositionOutputStream createOrOverwrite(long blockSizeHint) throws IOException {
                return open(StandardOpenOption.CREATE, StandardOpenOption.TRUNCATE_EXISTING);
            }

            private PositionOutputStream open(StandardOpenOption... extra) throws IOException {
                List<StandardOpenOption> options = new ArrayList<>(List.of(extra));
                options.add(StandardOpenOption.WRITE);
                FileChannel channel = FileChannel.open(path, options.toArray(new StandardOpenOption[0]));
                return new PositionOutputStream() {
                    private long pos;

                    @Override
                    public long getPos() {
                        return pos;
                    }

                    @Override
                    public void write(int b) throws IOException {
                        write(new byte[] {(byte) b}, 0, 1);
                    }

                    @Override
                    public void write(byte[] b, int off, int len) throws IOException {
                        ByteBuffer buf = ByteBuffer.wrap(b, off, len);
                        while (buf.hasRemaining()) {
                            pos += channel.write(buf);
                        }
                    }

                    @Override
                    public void close() throws IOException {
                        channel.close();
                    }
                };
            }

            @Override
            public boolean supportsBlockSize() {
                return false;
            }

            @Override
            public long defaultBlockSize() {
                return 0;
            }
        };
    }

    static InputFile input(Path path) {
        return new InputFile() {
            @Override
            public long getLength() throws IOException {
                return Files.size(path);
            }

            @Override
            public SeekableInputStream newStream() throws IOException {
                FileChannel channel = FileChannel.open(path, StandardOpenOption.READ);
                return new DelegatingSeekableInputStream(Channels.newInputStream(channel)) {
                    @Override
                    public long getPos() throws IOException {
                        return channel.position();
                    }

                    @Override
                    public void seek(long newPos) throws IOException {
                        channel.position(newPos);
                    }
                };
            }
        };
    }

    static MessageType schema(Path path) throws IOException {
        try (ParquetFileReader reader = ParquetFileReader.open(input(path))) {
            return reader.getFooter().getFileMetaData().getSchema();
        }
    }

    /** All rows of a (small) file. */
    static List<Group> rows(Path path) throws IOException {
        List<Group> rows = new ArrayList<>();
        try (ParquetFileReader reader = ParquetFileReader.open(input(path))) {
            MessageType schema = reader.getFooter().getFileMetaData().getSchema();
            MessageColumnIO io = new ColumnIOFactory().getColumnIO(schema);
            PageReadStore rowGroup;
            while ((rowGroup = reader.readNextRowGroup()) != null) {
                RecordReader<Group> records = io.getRecordReader(rowGroup, new GroupRecordConverter(schema));
                for (long i = 0; i < rowGroup.getRowCount(); i++) {
                    rows.add(records.read());
                }
            }
        }
        return rows;
    }
}
