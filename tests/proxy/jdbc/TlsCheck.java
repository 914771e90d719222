// pgjdbc through tashkent's proxies, for tests/proxy/tls.rs: compiled with
// javac against Debian's /usr/share/java/postgresql.jar, run as
//
//     java -cp DIR:/usr/share/java/postgresql.jar TlsCheck STEP URL [STEP URL ...]
//
// Each step opens its own connection to its JDBC URL (which carries the
// user, sslmode and the rest) and prints one line the test asserts on. A
// step that goes otherwise than expected prints why and exits 1.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;

public class TlsCheck {
    public static void main(String[] args) throws Exception {
        if (args.length == 0 || args.length % 2 != 0) {
            System.err.println("usage: TlsCheck STEP URL [STEP URL ...]");
            System.exit(2);
        }
        for (int i = 0; i < args.length; i += 2) {
            String step = args[i];
            String url = args[i + 1];
            switch (step) {
                case "write": write(url); break;
                case "read": read(url); break;
                case "cancel": cancel(url); break;
                // Steps whose connection must fail: they print its SQLState.
                case "untrusted":
                case "refused": refused(step, url); break;
                default:
                    System.err.println("unknown step " + step);
                    System.exit(2);
            }
        }
    }

    // DDL, an INSERT with a PreparedStatement in autocommit, and a batch
    // of two in an explicit transaction.
    static void write(String url) throws SQLException {
        try (Connection c = DriverManager.getConnection(url)) {
            try (Statement st = c.createStatement()) {
                st.execute("CREATE TABLE jdbc_t (id int PRIMARY KEY, v text)");
            }
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO jdbc_t VALUES (?, ?)")) {
                ps.setInt(1, 1);
                ps.setString(2, "autocommit");
                ps.executeUpdate();
                c.setAutoCommit(false);
                for (int id = 2; id <= 3; id++) {
                    ps.setInt(1, id);
                    ps.setString(2, "batch");
                    ps.addBatch();
                }
                ps.executeBatch();
                c.commit();
                c.setAutoCommit(true);
            }
            System.out.println("write rows=" + count(c));
        }
    }

    // The table's rows, in order: id=v,...
    static void read(String url) throws SQLException {
        try (Connection c = DriverManager.getConnection(url);
                Statement st = c.createStatement();
                ResultSet rs = st.executeQuery("SELECT id, v FROM jdbc_t ORDER BY id")) {
            StringBuilder rows = new StringBuilder();
            while (rs.next()) {
                if (rows.length() > 0) {
                    rows.append(',');
                }
                rows.append(rs.getInt(1)).append('=').append(rs.getString(2));
            }
            System.out.println("read " + rows);
        }
    }

    // A statement timeout: pgjdbc cancels with a CancelRequest on a
    // connection of its own; the session then goes on.
    static void cancel(String url) throws SQLException {
        try (Connection c = DriverManager.getConnection(url)) {
            String state;
            try (Statement st = c.createStatement()) {
                st.setQueryTimeout(1);
                st.execute("SELECT pg_sleep(30)");
                state = "none";
            } catch (SQLException e) {
                state = e.getSQLState();
            }
            System.out.println("cancel " + state + " rows=" + count(c));
        }
    }

    static void refused(String step, String url) {
        try (Connection c = DriverManager.getConnection(url)) {
            System.out.println(step + " connected");
            System.exit(1);
        } catch (SQLException e) {
            System.out.println(step + " " + e.getSQLState());
            System.err.println(step + ": " + e);
        }
    }

    static long count(Connection c) throws SQLException {
        try (Statement st = c.createStatement();
                ResultSet rs = st.executeQuery("SELECT count(*) FROM jdbc_t")) {
            rs.next();
            return rs.getLong(1);
        }
    }
}
